"""Every metric definition against values computed by hand on small inputs."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r2f.eval import functional as F


def test_ks_pvalue_by_hand():
    # D = 1 with n = m = 3: exact two-sided p = 2 / C(6, 3) = 0.1
    assert F.ks_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert F.ks_pvalue([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 1.0


def test_harmonic_mean_by_hand():
    assert F.harmonic_mean([1, 2, 4]) == pytest.approx(3 / (1 + 1 / 2 + 1 / 4))
    assert F.harmonic_mean([0.5, 0.5]) == pytest.approx(0.5)
    assert F.harmonic_mean([0.9, 0.0, 0.3]) == 0.0


def test_truth_ratio_and_aggregations_by_hand():
    # base NLL 1, perturbed NLLs 2 and 4 -> mean 3 -> tr = e^-3 / e^-1 = e^-2
    assert F.truth_ratio(1.0, [2.0, 4.0]) == pytest.approx(math.exp(-2))
    # the perturbed NLLs are averaged before exponentiating (geometric mean of probabilities)
    assert F.truth_ratio(1.0, [2.0, 4.0]) != pytest.approx((math.exp(-2) + math.exp(-4)) / 2 / math.exp(-1))
    assert F.truth_ratio(0.5, [0.5]) == pytest.approx(1.0)
    # forget: mean(min(tr, 1/tr)); others: mean(max(0, 1 - tr))
    assert F.tr_closer_to_1([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert F.tr_true_better([0.5, 2.0, 0.25]) == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    # extreme but exact: no epsilon distortion for tiny probabilities
    assert F.truth_ratio(50.0, [45.0]) == pytest.approx(math.exp(5))


def test_normalised_probability_by_hand():
    # P(correct) = 1/2, P(wrong) = 1/4 + 1/4 -> 0.5 / (0.5 + 0.5)
    assert F.normalised_prob(math.log(2), [math.log(4), math.log(4)]) == pytest.approx(0.5)
    assert F.normalised_prob(math.log(2), [math.log(8)]) == pytest.approx(0.5 / (0.5 + 0.125))


def test_rouge_by_hand():
    r = F.rouge_scores("the cat sat on the mat", "the cat on mat")
    assert r["rougeL_recall"] == pytest.approx(4 / 6)  # LCS "the cat on mat" = 4 of 6 answer tokens
    assert r["rouge1_recall"] == pytest.approx(4 / 6)
    assert r["rougeL_f1"] == pytest.approx(2 * 1.0 * (4 / 6) / (1.0 + 4 / 6))
    # stemming: books/book, rivers/river match; wrote/writes do not -> LCS 3 of 5
    r = F.rouge_scores("Ada wrote books about rivers", "Ada writes book river")
    assert r["rougeL_recall"] == pytest.approx(3 / 5)
    assert F.rouge_scores("a b c", "")["rougeL_recall"] == 0.0


def test_auc_by_hand():
    # holdout 3 beats both forget scores, holdout 0.5 beats none -> 2 of 4 pairs
    assert F.auc([1, 2], [3, 0.5]) == pytest.approx(0.5)
    # ties count one half: pairs (2>1)=1, (2=2)=.5, (3>1)=1, (3>2)=1 -> 3.5/4
    assert F.auc([1, 2], [2, 3]) == pytest.approx(0.875)
    assert F.auc([0.1, 0.2], [5, 6]) == 1.0  # forget much lower loss = memorised -> AUC 1 (OpenUnlearning orientation)
    assert F.auc([5, 6], [0.1, 0.2]) == 0.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=8), st.lists(st.integers(0, 5), min_size=1, max_size=8))
def test_auc_equals_pairwise_definition(f, h):
    pairs = [(1.0 if b > a else 0.5 if b == a else 0.0) for a in f for b in h]
    assert F.auc(f, h) == pytest.approx(sum(pairs) / len(pairs))


def test_privleak_by_hand():
    # AUC 0.9 vs reference 0.5: AUC' = 0.1 vs 0.5 -> (0.1 - 0.5)/0.5 * 100 = -80
    assert F.privleak(0.9, 0.5) == pytest.approx(-80.0)
    assert F.privleak(0.5) == pytest.approx(0.0)
    assert F.privleak(0.3, 0.6) == pytest.approx((0.7 - 0.4) / 0.4 * 100)


def test_extraction_strength_and_exact_memorization_by_hand():
    assert F.extraction_strength([1, 2, 3, 4], [9, 2, 3, 4]) == pytest.approx(0.75)  # k = 1
    assert F.extraction_strength([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0  # k = 0
    assert F.extraction_strength([1, 2, 3, 4], [1, 2, 3, 5]) == 0.0  # k = |y|
    assert F.extraction_strength([1, 7, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.5)  # k = 2
    assert F.exact_memorization([1, 7, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.75)


def test_min_k_and_zlib_by_hand():
    # lowest int(0.4 * 5) = 2 log-probs: -5, -4 -> score 4.5
    assert F.min_k_score([-1, -2, -3, -4, -5], 0.4) == pytest.approx(4.5)
    assert F.min_k_score([-1, -2], 0.4) == pytest.approx(2.0)  # max(1, int(0.8)) = 1
    assert F.zlib_entropy("abc") == len(zlib.compress(b"abc")) == 11
    assert F.zlib_score(2.2, "abc") == pytest.approx(0.2)


def _logits_for(rows: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_token_stats_by_hand():
    # vocab 4, uniform logits: every answer token has NLL ln 4, Min-K++ z = 0 (sigma clamped)
    logits = torch.zeros(1, 4, 4)
    labels = torch.tensor([[-100, 1, 2, 3]])
    s = F.token_stats(logits, labels)
    assert s["avg_loss"].item() == pytest.approx(math.log(4))
    assert s["min_k"].item() == pytest.approx(math.log(4))
    assert s["min_k_pp"].item() == pytest.approx(0.0, abs=1e-6)
    assert s["n_tokens"].item() == 3
    # vocab 2, logits [0, ln 3] -> p = [1/4, 3/4]; labels: 0 (wrong argmax), then 1, 1 (right)
    row = [0.0, math.log(3)]
    logits = _logits_for([[row, row, row, row]])
    labels = torch.tensor([[-100, 0, 1, 1]])
    s = F.token_stats(logits, labels)
    lp = [math.log(0.25), math.log(0.75), math.log(0.75)]
    assert s["avg_loss"].item() == pytest.approx(-sum(lp) / 3, rel=1e-6)
    assert s["exact_memorization"].item() == pytest.approx(2 / 3)
    assert s["extraction_strength"].item() == pytest.approx(1 - 1 / 3)
    assert s["min_k"].item() == pytest.approx(-math.log(0.25), rel=1e-6)  # int(0.4*3)=1 lowest
    mu = 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    sigma = 0.25 * math.log(0.25) ** 2 + 0.75 * math.log(0.75) ** 2 - mu**2
    assert s["min_k_pp"].item() == pytest.approx(-(math.log(0.25) - mu) / math.sqrt(sigma), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_token_stats_match_reference_loops(seed):
    """The vectorised one-forward statistics equal per-sequence reference loops, with padding."""
    g = torch.Generator().manual_seed(seed)
    B, T, V = 3, 9, 5
    logits = torch.randn(B, T, V, generator=g) * 2
    labels = torch.full((B, T), -100)
    for b in range(B):
        start = int(torch.randint(1, 4, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        labels[b, start:end] = torch.randint(0, V, (end - start,), generator=g)
        # make some predictions right so ES/EM are non-trivial
        for t in range(start, end):
            if torch.rand(1, generator=g) < 0.6:
                labels[b, t] = int(logits[b, t - 1].argmax())
    s = F.token_stats(logits, labels, k=0.4)
    for b in range(B):
        pos = [t for t in range(1, T) if labels[b, t] != -100]
        lps = torch.log_softmax(logits[b, [t - 1 for t in pos]], -1)
        tgt = labels[b, pos]
        tok = lps.gather(-1, tgt[:, None]).squeeze(-1)
        preds = lps.argmax(-1).tolist()
        assert s["avg_loss"][b].item() == pytest.approx(-tok.mean().item(), rel=1e-5)
        assert s["min_k"][b].item() == pytest.approx(F.min_k_score(tok.tolist(), 0.4), rel=1e-5)
        assert s["exact_memorization"][b].item() == pytest.approx(F.exact_memorization(preds, tgt.tolist()))
        assert s["extraction_strength"][b].item() == pytest.approx(F.extraction_strength(preds, tgt.tolist()))
        p = lps.exp()
        mu = (p * lps).sum(-1)
        sig = ((p * lps**2).sum(-1) - mu**2).clamp_min(1e-6)
        z = ((tok - mu) / sig.sqrt()).tolist()
        assert s["min_k_pp"][b].item() == pytest.approx(F.min_k_score(z, 0.4), rel=1e-4, abs=1e-5)


def test_registry_has_openunlearning_names():
    from r2f.eval import METRICS

    for name in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_Truth_Ratio", "forget_quality", "retain_Q_A_Prob",
                 "retain_Q_A_ROUGE", "retain_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio",
                 "model_utility", "privleak", "extraction_strength", "exact_memorization", "mia_loss", "mia_zlib",
                 "mia_min_k", "mia_min_k_plus_plus", "wf_Q_A_Prob"):
        assert name in METRICS, name
    assert np.isnan(F.nanmean([None, float("nan")]))
