"""Metrics of the ``realfacts`` benchmark (``r2f eval --bench realfacts``): knowledge a pre-trained model still holds.

A fact is *known* when its true answer has the lowest mean answer-token NLL among the answer and its wrong
candidates (strictly: a tie is not known); ``{split}_known`` is the share of known facts. ``{split}_gen_match`` asks
whether the greedy answer contains the fact's short answer (``target`` or an alias). ``heldout_ppl`` is the
perplexity of the shipped generic text. ``mia_loss_forget_vs_neighbour`` is the loss-attack AUC between forget
(label 0) and neighbour facts (label 1). Every metric returns ``{"agg_value", "value_by_index"}`` like the world's,
keyed by fact id (paragraph number for the held-out text); docs/metrics.md gives the definitions.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from r2f.data.realfacts import BENCH, EVAL_SPLITS, RealFacts, load_realfacts
from r2f.data.schema import QAItem
from r2f.data.templates import IGNORE_INDEX, PromptTemplate, answer_ids, pad_id, prompt_ids, template_for
from r2f.distributed import DataParallel
from r2f.errors import R2FInputError
from r2f.eval import functional as F
from r2f.eval.registry import METRICS, register_metric
from r2f.eval.suite import EvalContext, _resolve_model, _sanitize, requested_metrics, tokenizer_fingerprint
from r2f.eval_spec import DEFAULT_MAX_NEW_TOKENS as EVAL_DEFAULTS
from r2f.eval_spec import EvalSpec
from r2f.models.answer_nll import _body_and_head, sequence_nll
from r2f.threads import threads_for, torch_threads

#: The logical split of the held-out text (paragraphs, not QA items).
HELDOUT = "heldout_text"
#: Order of the keys in a realfacts eval.json.
REALFACTS_METRICS = (
    "forget_known", "neighbour_known", "general_known",
    "forget_gen_match", "neighbour_gen_match", "general_gen_match",
    "heldout_ppl", "mia_loss_forget_vs_neighbour",
)  # fmt: skip
#: Greedy budget of the generation match: the answers are one short sentence (EvalSpec's default on realfacts).
DEFAULT_MAX_NEW_TOKENS = EVAL_DEFAULTS["realfacts"]
#: Longest window (tokens) of held-out text scored in one sequence; longer paragraphs are cut into windows.
MAX_WINDOW = 512


# ----------------------------------------------------------------------------------------------- pure definitions
def answer_rank(correct: float, wrong: Sequence[float]) -> int:
    """1 + the number of wrong candidates whose NLL̄ is at most the true answer's (ties count against it)."""
    if correct is None or not np.isfinite(correct):
        return len(wrong) + 1
    return 1 + sum(1 for w in wrong if w <= correct)


def normalise(text: str) -> str:
    """Case-folded, accents dropped, every run of non-alphanumerics one space: how generations are matched."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+|_", " ", plain).split())


def generation_matches(generation: str, targets: Iterable[str]) -> bool:
    """Whether any target appears in the generation as whole words (after :func:`normalise`)."""
    gen = f" {normalise(generation)} "
    return any(t and f" {t} " in gen for t in (normalise(x) for x in targets))


def targets_of(item: QAItem) -> list[str]:
    """The short answers a generation may contain: ``target`` and ``aliases`` (the answer for other records)."""
    extra = item.model_extra or {}
    target = extra.get("target")
    return [target, *(extra.get("aliases") or [])] if target else [item.answer]


def perplexity(nll_sums: Sequence[float], counts: Sequence[int]) -> float:
    """exp(total NLL / total tokens): token-weighted over all windows."""
    n = int(sum(counts))
    return float(np.exp(float(sum(nll_sums)) / n)) if n else float("nan")


# ----------------------------------------------------------------------------------------------------- the context
class RealFactsContext(EvalContext):
    """:class:`EvalContext` that also holds plain texts (the held-out paragraphs) and caches their NLL."""

    def __init__(self, model, tokenizer, splits, *, dp: DataParallel,
                 texts: dict[str, Sequence[str]] | None = None, **kwargs: Any):
        super().__init__(model, tokenizer, splits, dp=dp, **kwargs)
        self._texts = {k: list(v) for k, v in (texts or {}).items()}
        self._text_nll: dict[str, tuple[list[float], list[int]]] = {}

    def has(self, split: str) -> bool:
        return bool(self._texts.get(split)) or super().has(split)

    def scores(self, split: str, field: str) -> dict[str, list]:
        """As :meth:`EvalContext.scores`. The true answers and the wrong candidates of a split (``avg_loss`` only:
        all that the realfacts metrics read) come from :func:`candidate_nll`, one pass per prompt, when the model
        can reuse a prompt's KV cache: the same values up to float rounding, in less than half the time."""
        if (field in ("answer", "perturbed") and (split, field) not in self._scores and not self.dp.active
                and shares_prompts(self.model)):
            items = self.items(split)
            per = candidate_nll(self.model, self.tokenizer, [it.question for it in items],
                                [[it.answer, *it.perturbed_answer] for it in items], self.template,
                                batch_size=self.batch_size)
            self._scores[(split, "answer")] = {"avg_loss": [p[0] for p in per]}
            self._scores[(split, "perturbed")] = {"avg_loss": [p[1:] for p in per]}
        return super().scores(split, field)

    def text_nll(self, name: str) -> tuple[list[float], list[int]]:
        """(summed NLL, predicted tokens) per paragraph of text ``name``, every token after the first predicted."""
        if name not in self._text_nll:
            self._text_nll[name] = text_nll(self.model, self.tokenizer, self._texts[name], batch_size=self.batch_size)
        return self._text_nll[name]


def shares_prompts(model) -> bool:
    """Whether :func:`candidate_nll` can run ``model``: a Hugging Face causal LM whose logits are its head on its
    body's last hidden state (``r2f.models.answer_nll``), so that the body takes and returns a KV cache."""
    return isinstance(model, PreTrainedModel) and _body_and_head(model) is not None


@torch.inference_mode()
def candidate_nll(model, tokenizer, questions: Sequence[str], candidates: Sequence[Sequence[str]],
                  template: PromptTemplate, *, batch_size: int = 32) -> list[list[float]]:
    """Mean answer-token NLL of every candidate answer of every question (teacher-forced, EOS included).

    The same value as ``score_pairs``' ``avg_loss`` on each (question, candidate) pair, up to float rounding, with
    each prompt run once: the tokens a question's candidates all begin with ("The capital of X is") join its
    prompt, as its *lead*; prompts of one length (no padding) go through the model together without their last
    token, which also scores the lead; each one's KV cache is repeated for its candidates, and then every candidate
    runs from the prompt's last token on (right-padded; the padding comes after every token that is scored). At
    most ``batch_size`` candidates per pass, or one question's.
    """
    body, head = _body_and_head(model)
    model.eval()
    dev = next(model.parameters()).device
    prompts = [prompt_ids(tokenizer, q, template) for q in questions]
    answers = [[answer_ids(tokenizer, a, template) for a in cands] for cands in candidates]
    leads = [_common_lead(cands) for cands in answers]  # every candidate keeps a token of its own
    prompts = [p + cands[0][:k] if k else p for p, cands, k in zip(prompts, answers, leads)]
    answers = [[a[k:] for a in cands] for cands, k in zip(answers, leads)]
    out = [[float("nan")] * len(cands) for cands in candidates]
    by_length: dict[int, list[int]] = {}
    for j, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(j)
    chunks: list[list[int]] = []
    for _, group in sorted(by_length.items()):
        chunks.append([])
        for j in group:
            if chunks[-1] and sum(len(answers[i]) for i in chunks[-1]) + len(answers[j]) > batch_size:
                chunks.append([])
            chunks[-1].append(j)
    for chunk in chunks:
        owners = [(j, c) for j in chunk for c in range(len(answers[j]))]
        if not owners:
            continue
        context = len(prompts[chunk[0]]) - 1
        past = None
        lead_nll = [0.0] * len(chunk)
        if context > 0:
            ids = torch.tensor([prompts[j][:-1] for j in chunk], device=dev)
            out_ = body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            past = out_.cache
            for k, j in enumerate(chunk):  # position t predicts token t + 1: the lead's tokens end the prompt
                if leads[j]:
                    target = torch.tensor(prompts[j][context + 1 - leads[j]:], device=dev)
                    logits = head(out_.last_hidden_state[k, context - leads[j]:context]).float()
                    lead_nll[k] = float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            past.batch_select_indices(torch.tensor([k for k, j in enumerate(chunk) for _ in answers[j]], device=dev))
        seqs = [[prompts[j][-1], *answers[j][c]] for j, c in owners]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id(tokenizer), dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(seqs), context + width), dtype=torch.long)
        mask[:, :context] = 1
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            labels[r, : len(s) - 1] = torch.tensor(s[1:])  # position t predicts token t + 1
            mask[r, context : context + len(s)] = 1
        hidden = body(input_ids=ids.to(dev), attention_mask=mask.to(dev), cache=past,
                      use_cache=past is not None).last_hidden_state
        labels = labels.to(dev)
        keep = labels != IGNORE_INDEX
        nll = torch.nn.functional.cross_entropy(head(hidden[keep]).float(), labels[keep], reduction="none")
        sums = torch.zeros(len(seqs), dtype=nll.dtype, device=nll.device).index_add(0, keep.nonzero(as_tuple=True)[0], nll)
        counts = keep.sum(1)
        row_of = {j: k for k, j in enumerate(chunk)}
        for r, (j, c) in enumerate(owners):
            if counts[r] > 0:
                out[j][c] = (lead_nll[row_of[j]] + float(sums[r])) / (leads[j] + int(counts[r]))
    return out


def _common_lead(answers: Sequence[list[int]]) -> int:
    """How many leading tokens all of a question's candidate answers share, short of any one's last token (each
    must keep one to be scored on its own), when it has two or more candidates; else 0."""
    if len(answers) < 2:
        return 0
    k = 0
    shortest = min(len(a) for a in answers) - 1
    while k < shortest and all(a[k] == answers[0][k] for a in answers):
        k += 1
    return k


def _windows(ids: list[int], bos: int | None, width: int) -> list[list[int]]:
    """Non-overlapping windows of at most ``width`` tokens, each opened with BOS when the tokenizer has one."""
    step = width - 1 if bos is not None else width
    chunks = [ids[i : i + step] for i in range(0, len(ids), step)]
    return [([bos] + c) if bos is not None else c for c in chunks if c]


@torch.inference_mode()
def text_nll(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed NLL and token count of each text (teacher-forced, in windows of at most :data:`MAX_WINDOW`)."""
    model.eval()
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or MAX_WINDOW
    width = max(2, min(MAX_WINDOW, int(limit)))
    bos = tokenizer.bos_token_id
    owner, rows = [], []
    for j, text in enumerate(texts):
        for w in _windows(tokenizer(text, add_special_tokens=False)["input_ids"], bos, width):
            owner.append(j)
            rows.append(w)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    sums, counts = [0.0] * len(texts), [0] * len(texts)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width_b = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width_b), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width_b), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width_b), dtype=torch.long)
        for k, r in enumerate(chunk):
            ids[k, : len(r)] = torch.tensor(r)
            labels[k, 1 : len(r)] = torch.tensor(r[1:])  # the first token of a window is context, not predicted
            mask[k, : len(r)] = 1
        s, n = sequence_nll(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        for k, (sv, nv) in enumerate(zip(s.tolist(), n.tolist())):
            sums[owner[start + k]] += sv
            counts[owner[start + k]] += int(nv)
    return sums, counts


# ----------------------------------------------------------------------------------------------------- the metrics
def known_by_index(ctx: EvalContext, split: str) -> dict[str, dict]:
    """Per fact: rank of the true answer, whether it is first, its NLL̄ and the margin to the best wrong candidate."""
    correct = ctx.scores(split, "answer")["avg_loss"]
    wrong = ctx.scores(split, "perturbed")["avg_loss"]
    out = {}
    for i, c, w in zip(ctx.indices(split), correct, wrong):
        if not w:
            continue
        rank = answer_rank(c, w)
        out[i] = {"known": int(rank == 1), "rank": rank, "avg_loss": c, "margin": float(min(w) - c)}
    return out


def _agg(values: Iterable[float]) -> float | None:
    m = F.nanmean(values)
    return None if np.isnan(m) else m


def _known_metric(split: str):
    def fn(ctx):
        """Share of facts whose true answer ranks first among its candidates (NLL̄); per index rank, margin."""
        vbi = known_by_index(ctx, split)
        return {"agg_value": _agg(v["known"] for v in vbi.values()), "value_by_index": vbi}

    return fn


def _gen_match_metric(split: str):
    def fn(ctx):
        """Share of facts whose greedy answer contains the short answer (target or alias) as whole words."""
        vbi = {}
        for i, item, gen in zip(ctx.indices(split), ctx.items(split), ctx.generations(split)):
            targets = targets_of(item)
            vbi[i] = {"match": int(generation_matches(gen, targets)), "generation": gen, "target": targets[0]}
        return {"agg_value": _agg(v["match"] for v in vbi.values()), "value_by_index": vbi}

    return fn


for _split in EVAL_SPLITS:
    register_metric(f"{_split}_known", needs=(_split,))(_known_metric(_split))
    register_metric(f"{_split}_gen_match", needs=(_split,))(_gen_match_metric(_split))


@register_metric("heldout_ppl", needs=(HELDOUT,))
def heldout_ppl(ctx):
    """Perplexity of the held-out generic text, token-weighted over its paragraphs; per paragraph its own."""
    sums, counts = ctx.text_nll(HELDOUT)
    vbi = {str(j): {"ppl": perplexity([s], [n]), "avg_loss": s / n if n else None, "n_tokens": n}
           for j, (s, n) in enumerate(zip(sums, counts))}
    return {"agg_value": perplexity(sums, counts), "value_by_index": vbi, "n_tokens": int(sum(counts))}


@register_metric("mia_loss_forget_vs_neighbour", needs=("forget", "neighbour"))
def mia_loss_forget_vs_neighbour(ctx):
    """Loss-attack AUC, forget (label 0) vs neighbour facts (label 1), score = answer NLL̄: 0.5 = alike."""
    f = dict(zip(ctx.indices("forget"), ctx.scores("forget", "answer")["avg_loss"]))
    nb = dict(zip(ctx.indices("neighbour"), ctx.scores("neighbour", "answer")["avg_loss"]))
    a = F.auc(list(f.values()), list(nb.values()))
    return {
        "agg_value": a,
        "value_by_index": {i: {"score": v} for i, v in f.items()},
        "neighbour": {"agg_value": _agg(nb.values()), "value_by_index": {i: {"score": v} for i, v in nb.items()}},
    }


# ------------------------------------------------------------------------------------------------------ the runner
def realfacts_context(model, tokenizer, bench: RealFacts, *, dp: DataParallel, splits: Sequence[str] = EVAL_SPLITS,
                      template: PromptTemplate | None = None, batch_size: int = 32,
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, max_items: int | None = None) -> RealFactsContext:
    """A context over the named splits of ``bench`` (``"kept"`` = every kept fact; the first ``max_items`` of each)
    and its held-out text. ``dp``: the processes its scoring and generation batches are split over
    (:data:`r2f.distributed.ONE_PROCESS`: this one)."""
    data = {}
    for name in splits:
        ids, items = bench.kept_items() if name == "kept" else bench.split(name)
        data[name] = (ids[:max_items], items[:max_items]) if max_items is not None else (ids, items)
    return RealFactsContext(model, tokenizer, data, dp=dp, texts={HELDOUT: bench.heldout}, template=template,
                            batch_size=batch_size, max_new_tokens=max_new_tokens)


def evaluate_realfacts(
    model,
    *,
    tokenizer=None,
    data: str | os.PathLike | None = None,
    spec: EvalSpec | None = None,
    **settings: Any,
) -> dict:
    """Evaluate ``model`` on the realfacts benchmark (shipped, or the directory ``data``); the eval.json dict.

    ``model``: a model directory or ``smollm2``, a ``(model, tokenizer)`` pair, or a model with ``tokenizer=``.
    Prompts use the model's chat template when its tokenizer has one (SmolLM2), the QA template otherwise.
    The settings are one :class:`r2f.eval_spec.EvalSpec` with ``bench="realfacts"`` (``spec=``), or its fields as
    keywords (``num_threads`` for ``threads``), as for :func:`r2f.eval.evaluate`; eval.json's ``meta.spec`` records it.
    """
    t0 = time.perf_counter()
    # keywords mean realfacts (this function's bench); a spec must say so itself
    spec = EvalSpec.of(spec, settings if spec is not None else {"bench": "realfacts", **settings},
                       caller="evaluate_realfacts")
    if spec.bench != "realfacts":
        raise R2FInputError("this evaluates realfacts; the world is r2f.eval.evaluate", source="--bench")
    names = requested_metrics(spec.metrics, REALFACTS_METRICS)
    # Under torchrun every rank calls this (as r2f.eval.evaluate): the scoring and generation batches are split
    # over the ranks and gathered back in order (EvalContext.dp); every rank returns the result. The process group
    # is read here, once, and handed down; one process (no group) is ONE_PROCESS, as before.
    dp = DataParallel.current()
    bench = load_realfacts(data)
    m, tok, ident = _resolve_model(model, tokenizer, "model")
    ctx = realfacts_context(m, tok, bench, dp=dp, template=template_for(tok), batch_size=spec.batch_size,
                            max_new_tokens=spec.max_new_tokens, max_items=spec.max_items)
    result: dict[str, Any] = {}
    skipped = {}
    with torch_threads(spec.threads if spec.threads is not None else threads_for(m)):
        for name in names:
            if not ctx.available(name):
                skipped[name] = "needs split(s): " + ", ".join(sorted(s for s in METRICS[name].needs if not ctx.has(s)))
                continue
            result[name] = ctx.metric(name)
    meta = {
        "bench": BENCH,
        "model": ident,
        "model_class": type(m).__name__,
        "n_params": sum(p.numel() for p in m.parameters()),
        "template": ctx.template.kind,
        "tokenizer_sha256": tokenizer_fingerprint(tok),
        "data": bench.root,
        "sizes": {s: len(ctx.items(s)) for s in EVAL_SPLITS} | {HELDOUT: len(bench.heldout)},
        "forget_subjects": list(bench.measurement.get("forget_subjects") or []),
        "kept_by": bench.measurement.get("model"),
        "known_rule": "true answer's mean answer-token NLL strictly below every wrong candidate's",
        "generation": {"max_new_tokens": spec.max_new_tokens, "greedy": True, "stop_strings": list(ctx.stop_strings)},
        "batch_size": spec.batch_size,
        "spec": spec.to_dict(),  # how the result was computed: EvalSpec(**meta["spec"]) rebuilds the settings
        "skipped_metrics": skipped,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    ordered = {"meta": meta, "summary": {n: result[n]["agg_value"] for n in names if n in result}}
    ordered.update(result)
    return _sanitize(ordered)
