"""The registered metrics: TOFU/MUSE metrics with OpenUnlearning's names and definitions."""

from __future__ import annotations

import numpy as np

from r2f.eval import functional as F
from r2f.eval.registry import register_metric

#: eval.json prefix of each logical split (OpenUnlearning's names; "wf" = world_facts).
PREFIX = {"forget": "forget", "retain": "retain", "world_facts": "wf", "holdout": "holdout"}
#: Truth-ratio base answer per split: TOFU uses the paraphrased answer on forget/retain, the answer on world facts.
TR_BASE = {"forget": "paraphrased_answer", "retain": "paraphrased_answer", "world_facts": "answer"}


def _agg(values) -> float | None:
    m = F.nanmean(values)
    return None if np.isnan(m) else m


# ----------------------------------------------------------------------------- probabilities
def _prob_metric(split: str):
    def fn(ctx):
        """P̄ = exp(−mean answer-token NLL) of the answer; per index {"prob", "avg_loss"}."""
        s = ctx.scores(split, "answer")
        vbi = {i: {"prob": float(np.exp(-l)), "avg_loss": l} for i, l in zip(ctx.indices(split), s["avg_loss"])}
        return {"agg_value": _agg(v["prob"] for v in vbi.values()), "value_by_index": vbi}

    return fn


def _para_prob_metric(split: str):
    def fn(ctx):
        """P̄ of the truth-ratio base answer (paraphrased answer; the answer on world facts)."""
        s = ctx.scores(split, TR_BASE[split])
        vbi = {i: {"prob": float(np.exp(-l)), "avg_loss": l} for i, l in zip(ctx.indices(split), s["avg_loss"])}
        return {"agg_value": _agg(v["prob"] for v in vbi.values()), "value_by_index": vbi}

    return fn


def _pert_prob_metric(split: str):
    def fn(ctx):
        """P̄ of each perturbed answer; per index {"prob": [..], "avg_loss": [..]}, agg = mean over all."""
        per = ctx.scores(split, "perturbed")["avg_loss"]
        vbi = {}
        for i, losses in zip(ctx.indices(split), per):
            if losses:
                vbi[i] = {"prob": [float(np.exp(-l)) for l in losses], "avg_loss": list(losses)}
        return {"agg_value": _agg(p for v in vbi.values() for p in v["prob"]), "value_by_index": vbi}

    return fn


def _normalised_metric(split: str):
    def fn(ctx):
        """P(answer) / (P(answer) + Σ P(perturbed)); per index {"prob"}."""
        correct = ctx.scores(split, "answer")["avg_loss"]
        wrong = ctx.scores(split, "perturbed")["avg_loss"]
        vbi = {i: {"prob": F.normalised_prob(c, w)} for i, c, w in zip(ctx.indices(split), correct, wrong) if w}
        return {"agg_value": _agg(v["prob"] for v in vbi.values()), "value_by_index": vbi}

    return fn


# ----------------------------------------------------------------------------- ROUGE
def _rouge_metric(split: str):
    def fn(ctx):
        """ROUGE-L recall of the greedy generation against the answer; per index also rouge1_recall,
        rougeL_f1, the generation and the ground truth."""
        gens = ctx.generations(split)
        vbi = {}
        for i, item, gen in zip(ctx.indices(split), ctx.items(split), gens):
            r = F.rouge_scores(item.answer, gen)
            vbi[i] = {**r, "input": item.question, "ground_truth": item.answer, "generation": gen}
        return {"agg_value": _agg(v["rougeL_recall"] for v in vbi.values()), "value_by_index": vbi}

    return fn


# ----------------------------------------------------------------------------- truth ratio
def truth_ratios(ctx, split: str) -> dict[str, float]:
    base = ctx.scores(split, TR_BASE[split])["avg_loss"]
    wrong = ctx.scores(split, "perturbed")["avg_loss"]
    return {i: F.truth_ratio(c, w) for i, c, w in zip(ctx.indices(split), base, wrong) if w}


def _tr_metric(split: str):
    def fn(ctx):
        """Truth ratio tr = P̄(perturbed, geometric mean over k) / P̄(base); per index {"score": tr}.
        Forget: mean(min(tr, 1/tr)); other splits: mean(max(0, 1 − tr))."""
        trs = truth_ratios(ctx, split)
        agg = F.tr_closer_to_1 if split == "forget" else F.tr_true_better
        return {"agg_value": agg(trs.values()) if trs else None, "value_by_index": {i: {"score": t} for i, t in trs.items()}}

    return fn


for _split in ("forget", "retain", "world_facts", "holdout"):
    register_metric(f"{PREFIX[_split]}_Q_A_Prob", needs=(_split,))(_prob_metric(_split))
for _split in ("forget", "retain"):
    register_metric(f"{PREFIX[_split]}_Q_A_PARA_Prob", needs=(_split,))(_para_prob_metric(_split))
for _split in ("forget", "retain", "world_facts"):
    register_metric(f"{PREFIX[_split]}_Q_A_PERT_Prob", needs=(_split,))(_pert_prob_metric(_split))
    register_metric(f"{PREFIX[_split]}_Q_A_Prob_normalised", needs=(_split,))(_normalised_metric(_split))
    register_metric(f"{PREFIX[_split]}_Q_A_ROUGE", needs=(_split,))(_rouge_metric(_split))
    register_metric(f"{PREFIX[_split]}_Truth_Ratio", needs=(_split,))(_tr_metric(_split))


# ----------------------------------------------------------------------------- forget quality, utility
@register_metric("forget_quality", needs=("forget",), needs_reference=True)
def forget_quality(ctx):
    """KS-test p-value between the forget truth ratios of this model and of the retain model."""
    ref = ctx.reference_forget_tr()
    if ref is None:
        return {"agg_value": None, "value_by_index": {}}
    own = [v["score"] for v in ctx.metric("forget_Truth_Ratio")["value_by_index"].values()]
    return {"agg_value": F.ks_pvalue(own, ref) if own and ref else None, "value_by_index": {}}


#: OpenUnlearning's model_utility has 9 inputs; we have no real_authors split, so 6.
UTILITY_INPUTS = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")


@register_metric("model_utility", needs=("retain",))
def model_utility(ctx):
    """Harmonic mean of Prob, ROUGE-L recall and Truth Ratio on retain and world_facts (6 numbers)."""
    parts = {}
    for name in UTILITY_INPUTS:
        if ctx.available(name):
            parts[name] = ctx.metric(name)["agg_value"]
    vals = [v for v in parts.values() if v is not None]
    return {"agg_value": F.harmonic_mean(vals) if vals else None, "value_by_index": {}, "inputs": parts}


# ----------------------------------------------------------------------------- memorisation
@register_metric("extraction_strength", needs=("forget",))
def extraction_strength(ctx):
    """ES = 1 − k/|y| (teacher-forced), forget split; per index {"score"}."""
    s = ctx.scores("forget", "answer")["extraction_strength"]
    vbi = {i: {"score": v} for i, v in zip(ctx.indices("forget"), s)}
    return {"agg_value": _agg(v["score"] for v in vbi.values()), "value_by_index": vbi}


@register_metric("exact_memorization", needs=("forget",))
def exact_memorization(ctx):
    """Fraction of teacher-forced argmax answer tokens equal to the labels, forget split."""
    s = ctx.scores("forget", "answer")["exact_memorization"]
    vbi = {i: {"score": v} for i, v in zip(ctx.indices("forget"), s)}
    return {"agg_value": _agg(v["score"] for v in vbi.values()), "value_by_index": vbi}


# ----------------------------------------------------------------------------- membership inference
def _mia_scores(ctx, split: str, attack: str) -> dict[str, float]:
    s = ctx.scores(split, "answer")
    if attack == "loss":
        vals = s["avg_loss"]
    elif attack == "zlib":
        vals = [F.zlib_score(l, t) for l, t in zip(s["avg_loss"], s["answer_text"])]
    elif attack == "min_k":
        vals = s["min_k"]
    elif attack == "min_k_plus_plus":
        vals = s["min_k_pp"]
    else:  # pragma: no cover
        raise ValueError(attack)
    return dict(zip(ctx.indices(split), vals))


def _mia_metric(attack: str):
    def fn(ctx):
        """MIA AUC, forget (label 0) vs holdout (label 1), attack score = higher for non-members."""
        f = _mia_scores(ctx, "forget", attack)
        h = _mia_scores(ctx, "holdout", attack)
        a = F.auc(list(f.values()), list(h.values()))
        return {
            "agg_value": a,
            "auc": a,
            "value_by_index": {i: {"score": v} for i, v in f.items()},
            "forget": {"agg_value": _agg(f.values()), "value_by_index": {i: {"score": v} for i, v in f.items()}},
            "holdout": {"agg_value": _agg(h.values()), "value_by_index": {i: {"score": v} for i, v in h.items()}},
        }

    return fn


for _attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
    register_metric(f"mia_{_attack}", needs=("forget", "holdout"))(_mia_metric(_attack))


@register_metric("privleak", needs=("forget", "holdout"))
def privleak(ctx):
    """(AUC′ − AUC′_retain)/AUC′_retain × 100, AUC′ = 1 − Min-K% AUC; retain AUC 0.5 without a reference."""
    a = ctx.metric("mia_min_k")["agg_value"]
    ref = ctx.reference_mia_min_k()
    ref_used = 0.5 if ref is None else ref
    return {"agg_value": F.privleak(a, ref_used), "value_by_index": {}, "reference_auc": ref_used}
