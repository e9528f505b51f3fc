"""Pure metric functions on tensors and lists (no model, no I/O).

Every definition follows SPEC §4 / OpenUnlearning; ``docs/metrics.md`` states each one and
where it differs from OpenUnlearning. All functions here are unit-tested against hand values.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

# rouge_score (it loads nltk) and scipy.stats are imported inside the functions that use them: together about
# 1 s, which every unlearning run would pay for nothing (r2f.methods.guard imports r2f.eval.scoring, which imports
# this module) although only the evaluation's metrics call them.

IGNORE_INDEX = -100
#: Largest |log ratio| kept before exponentiating (exp(700) is finite in float64).
_MAX_LOG = 700.0


# --------------------------------------------------------------------------- token statistics
def token_stats(logits: torch.Tensor, labels: torch.Tensor, *, k: float = 0.4, with_min_k_pp: bool = True) -> dict[str, torch.Tensor]:
    """Per-sequence statistics from ONE teacher-forced forward (shifted, padding-aware, no Python loops).

    ``logits`` (B, T, V), ``labels`` (B, T) with ``-100`` on prompt and padding. Returns tensors of
    shape (B,): ``avg_loss`` (mean answer-token NLL), ``n_tokens``, ``min_k`` (−mean of the lowest
    ``max(1, int(k·n))`` token log-probs), ``min_k_pp`` (same on the Min-K%++ z-scores),
    ``exact_memorization`` (fraction of argmax tokens equal to the labels) and
    ``extraction_strength`` (1 − k*/n, k* the shortest prefix after which argmax matches the whole
    remaining suffix). Only answer positions are materialised at vocabulary width.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    valid = shift_labels != IGNORE_INDEX
    n = valid.sum(1)
    rows = shift_logits[valid].float()  # (N, V): answer positions only
    targets = shift_labels[valid]
    logp = torch.log_softmax(rows, dim=-1)
    tok_lp = logp.gather(-1, targets[:, None]).squeeze(-1)
    argmax_ok = rows.argmax(-1) == targets

    B, T = shift_labels.shape
    lp_full = torch.zeros(B, T, dtype=torch.float32, device=logits.device)
    lp_full[valid] = tok_lp
    ok_full = torch.zeros(B, T, dtype=torch.bool, device=logits.device)
    ok_full[valid] = argmax_ok

    nf = n.clamp_min(1).to(torch.float32)
    avg_loss = -(lp_full.sum(1)) / nf
    em = ok_full.sum(1).to(torch.float32) / nf
    # extraction strength: answer positions are contiguous, so k* = n − (length of the trailing run of
    # correct argmax predictions); pad positions count as "correct" so the run can reach the end.
    ok_or_pad = ok_full | ~valid
    trailing = torch.flip(torch.cumprod(torch.flip(ok_or_pad.to(torch.int64), [1]), 1), [1]).bool() & valid
    es = trailing.sum(1).to(torch.float32) / nf

    out = {
        "avg_loss": avg_loss,
        "n_tokens": n,
        "min_k": _bottom_k_neg_mean(lp_full, valid, n, k),
        "exact_memorization": em,
        "extraction_strength": es,
    }
    if with_min_k_pp:
        p = logp.exp()
        mu = (p * logp).sum(-1)
        sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(1e-6)
        z_full = torch.zeros(B, T, dtype=torch.float32, device=logits.device)
        z_full[valid] = (tok_lp - mu) / sigma.sqrt()
        out["min_k_pp"] = _bottom_k_neg_mean(z_full, valid, n, k)
    empty = n == 0
    if empty.any():
        for key in ("avg_loss", "min_k", "min_k_pp"):
            if key in out:
                out[key] = out[key].masked_fill(empty, float("nan"))
    return out


def _bottom_k_neg_mean(values: torch.Tensor, valid: torch.Tensor, n: torch.Tensor, k: float) -> torch.Tensor:
    """−mean of the ``max(1, int(k·n))`` smallest valid values per row (OpenUnlearning's Min-K%)."""
    v = values.masked_fill(~valid, float("inf"))
    srt, _ = torch.sort(v, dim=1)
    num_k = torch.clamp((n.to(torch.float64) * k).floor().to(torch.long), min=1)
    take = torch.arange(v.size(1), device=v.device)[None, :] < num_k[:, None]
    take = take & torch.isfinite(srt)
    s = torch.where(take, srt, torch.zeros_like(srt)).sum(1)
    return -s / take.sum(1).clamp_min(1).to(torch.float32)


# --------------------------------------------------------------------------- scalar definitions
def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K% score of one sequence: −mean of the ``max(1, int(k·n))`` lowest token log-probs."""
    scores = sorted(float(x) for x in token_logprobs)
    if not scores:
        return 0.0
    num = max(1, int(len(scores) * k))
    return -float(np.mean(scores[:num]))


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (OpenUnlearning's ZLib attack denominator)."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(avg_loss: float, text: str) -> float:
    """ZLib MIA score: mean answer-token NLL divided by the zlib entropy of the answer text."""
    return float(avg_loss) / zlib_entropy(text)


def extraction_strength(preds: Sequence[int], labels: Sequence[int]) -> float:
    """ES = 1 − k/|y|, k the smallest prefix length after which ``preds`` equals ``labels`` to the end.

    k = |y| when even the last token is wrong (ES = 0). Reference implementation for tests.
    """
    n = len(labels)
    if n == 0:
        return 0.0
    for k in range(n + 1):
        if list(preds[k:]) == list(labels[k:]):
            return 1.0 - k / n
    return 0.0  # unreachable: k = n always matches


def exact_memorization(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of positions where the teacher-forced argmax equals the label."""
    n = len(labels)
    return sum(int(p == t) for p, t in zip(preds, labels)) / n if n else float("nan")


def prob_from_loss(avg_loss: float) -> float:
    """P̄ = exp(−mean answer-token NLL)."""
    return math.exp(-avg_loss)


def truth_ratio(correct_avg_loss: float, wrong_avg_losses: Sequence[float]) -> float:
    """tr = exp(−mean_k NLL̄(wrong_k)) / exp(−NLL̄(correct)), computed in log space.

    ``correct`` is the paraphrased answer on forget/retain, the answer on world_facts.
    """
    wrong = float(np.mean(np.asarray(wrong_avg_losses, dtype=np.float64)))
    return math.exp(float(np.clip(correct_avg_loss - wrong, -_MAX_LOG, _MAX_LOG)))


def tr_closer_to_1(trs: Iterable[float]) -> float:
    """Forget aggregation: mean(min(tr, 1/tr))."""
    a = np.asarray(list(trs), dtype=np.float64)
    return float(np.mean(np.minimum(a, 1.0 / a)))


def tr_true_better(trs: Iterable[float]) -> float:
    """Retain / world_facts aggregation: mean(max(0, 1 − tr))."""
    a = np.asarray(list(trs), dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - a)))


def normalised_prob(correct_avg_loss: float, wrong_avg_losses: Sequence[float]) -> float:
    """P(correct) / (P(correct) + Σ_k P(wrong_k)) with P = exp(−mean NLL), computed stably."""
    diffs = np.clip(np.asarray(correct_avg_loss, dtype=np.float64) - np.asarray(wrong_avg_losses, dtype=np.float64), -_MAX_LOG, _MAX_LOG)
    return float(1.0 / (1.0 + np.exp(diffs).sum()))


@functools.cache
def _rouge_scorer() -> RougeScorer:
    """The one ROUGE scorer (built once: its stemmer is set up at construction; scoring keeps no state)."""
    from rouge_score.rouge_scorer import RougeScorer  # deferred: see the note at the top of the module

    return RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_scores(answer: str, generation: str) -> dict[str, float]:
    """ROUGE of a generation against the ground-truth answer (target first, as OpenUnlearning).

    Returns ``rougeL_recall`` (the TOFU metric), ``rouge1_recall`` and ``rougeL_f1``.
    """
    s = _rouge_scorer().score(answer, generation)
    return {"rougeL_recall": s["rougeL"].recall, "rouge1_recall": s["rouge1"].recall, "rougeL_f1": s["rougeL"].fmeasure}


def ks_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Forget quality: two-sample KS test p-value (``scipy.stats.ks_2samp``)."""
    from scipy.stats import ks_2samp  # deferred: see the note at the top of the module

    return float(ks_2samp(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Model utility: ``scipy.stats.hmean``; 0 when any value is 0 (a dead model has no utility)."""
    from scipy.stats import hmean  # deferred: see the note at the top of the module

    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    if np.any(a <= 0):
        return 0.0
    return float(hmean(a))


def auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MIA AUC with OpenUnlearning's orientation: forget = label 0, holdout = label 1, score = attack score
    (higher = "looks less like a member"). Equals ``sklearn.metrics.roc_auc_score(labels, scores)``:
    P(holdout score > forget score) + ½·P(tie), via the Mann–Whitney rank formula. 1.0 means the forget
    set is clearly memorised; 0.5 means indistinguishable from never-seen data.
    """
    from scipy.stats import rankdata  # deferred: see the note at the top of the module

    f = np.asarray(forget_scores, dtype=np.float64)
    h = np.asarray(holdout_scores, dtype=np.float64)
    if f.size == 0 or h.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([f, h]))  # average ranks for ties
    u_h = ranks[f.size :].sum() - h.size * (h.size + 1) / 2.0
    return float(u_h / (f.size * h.size))


def privleak(auc_model: float, auc_reference: float = 0.5) -> float:
    """PrivLeak = (AUC′ − AUC′_ref)/AUC′_ref × 100, AUC′ = 1 − AUC (Min-K%); ref 0.5 without a retain log.

    0 is ideal; strongly negative = forget set still memorised; positive = over-unlearned.
    """
    s, r = 1.0 - auc_model, 1.0 - auc_reference
    return float((s - r) / (r + 1e-10) * 100.0)


def nanmean(values: Iterable[float | None]) -> float:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")
