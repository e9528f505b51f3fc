"""``evaluate``: the whole TOFU-style suite on one model, with a retain oracle (model or log)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from r2f.data.loader import HALF_SPLITS, HALVES_RULE, RETAIN_OF, WORLD_FACTS_EVAL, load_split_positions, split_exists
from r2f.data.schema import QAItem
from r2f.data.templates import PromptTemplate, template_for
from r2f.distributed import ONE_PROCESS, DataParallel
from r2f.distributed import describe as describe_processes
from r2f.errors import R2FInputError
from r2f.eval import metrics as _metrics  # noqa: F401  (registers the metrics)
from r2f.eval.documents import evaluate_documents
from r2f.eval.registry import METRICS
from r2f.eval.relearn import relearn_attack
from r2f.eval.scoring import QA_STOP_STRINGS, generate_answers, score_pairs
from r2f.eval_spec import EvalSpec
from r2f.io import read_text
from r2f.models.loading import load_model, model_fingerprint
from r2f.threads import threads_for, torch_threads

#: What a reference (retain-oracle) evaluation needs: forget TRs for forget_quality, Min-K% AUC for privleak.
REFERENCE_METRICS = ("forget_Truth_Ratio", "mia_min_k")
#: Order of the keys in eval.json (OpenUnlearning's names first, then ours).
DEFAULT_METRICS = (
    "forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_Truth_Ratio", "forget_quality",
    "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
    "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio", "wf_Q_A_Prob",
    "model_utility", "privleak", "extraction_strength", "exact_memorization",
    "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus",
    "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_Q_A_Prob_normalised",
    "retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "retain_Q_A_Prob_normalised", "wf_Q_A_PERT_Prob",
    "holdout_Q_A_Prob",
)  # fmt: skip


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what makes two tokenizers interchangeable for scoring: vocab, special ids, chat template."""
    h = hashlib.sha256()
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
    }
    h.update(json.dumps(payload, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


class EvalContext:
    """Caches the model passes that metrics share: one scoring pass per (split, field), one generation per split."""

    def __init__(
        self,
        model,
        tokenizer,
        splits: dict[str, tuple[list[str], list[QAItem]]],
        *,
        template: PromptTemplate | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 200,
        stop_strings: Sequence[str] | None = None,
        k: float = 0.4,
        reference: dict | None = None,
        dp: DataParallel = ONE_PROCESS,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.dp = dp  # torchrun: scoring and generation batches split over the ranks, gathered back in order
        self.template = template or template_for(tokenizer)
        self._splits = splits
        self.batch_size, self.max_new_tokens, self.k = batch_size, max_new_tokens, k
        self.stop_strings = tuple(stop_strings) if stop_strings is not None else (QA_STOP_STRINGS if self.template.kind == "qa" else ())
        self.reference = reference or {}
        self._scores: dict[tuple[str, str], dict] = {}
        self._gens: dict[str, list[str]] = {}
        self._metrics: dict[str, dict] = {}

    # -- data
    def has(self, split: str) -> bool:
        return split in self._splits and len(self._splits[split][1]) > 0

    def indices(self, split: str) -> list[str]:
        return self._splits[split][0]

    def items(self, split: str) -> list[QAItem]:
        return self._splits[split][1]

    def available(self, name: str) -> bool:
        spec = METRICS.get(name)
        return spec is not None and all(self.has(s) for s in spec.needs)

    # -- cached passes
    def scores(self, split: str, field: str) -> dict[str, list]:
        key = (split, field)
        if key in self._scores:
            return self._scores[key]
        items = self.items(split)
        mia = field == "answer" and split in ("forget", "holdout")
        if field == "perturbed":
            qs, ans, owner = [], [], []
            for j, it in enumerate(items):
                for p in it.perturbed_answer:
                    qs.append(it.question)
                    ans.append(p)
                    owner.append(j)
            flat = score_pairs(self.model, self.tokenizer, qs, ans, self.template, batch_size=self.batch_size, k=self.k, desc=f"{split}/perturbed", dp=self.dp) if qs else {"avg_loss": []}
            per: list[list[float]] = [[] for _ in items]
            for o, l in zip(owner, flat["avg_loss"]):
                per[o].append(l)
            res = {"avg_loss": per}
        else:
            if field == "answer":
                ans = [it.answer for it in items]
            elif field == "paraphrased_answer":  # TOFU items always have one; fall back to the answer otherwise
                ans = [it.paraphrased_answer or it.answer for it in items]
            else:  # pragma: no cover
                raise ValueError(field)
            res = score_pairs(
                self.model, self.tokenizer, [it.question for it in items], ans, self.template,
                batch_size=self.batch_size, k=self.k, with_min_k_pp=mia, desc=f"{split}/{field}", dp=self.dp,
            )  # fmt: skip
        self._scores[key] = res
        return res

    def generations(self, split: str) -> list[str]:
        if split not in self._gens:
            self._gens[split] = generate_answers(
                self.model, self.tokenizer, [it.question for it in self.items(split)], self.template,
                batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, stop_strings=self.stop_strings,
                desc=f"{split}/generate", dp=self.dp,
            )  # fmt: skip
        return self._gens[split]

    def metric(self, name: str) -> dict:
        if name not in self._metrics:
            self._metrics[name] = METRICS[name].fn(self)
        return self._metrics[name]

    def derived(self, model, splits: dict[str, tuple[list[str], list[QAItem]]]) -> "EvalContext":
        """A fresh context (nothing cached) with this one's settings and reference, on ``model`` and ``splits``
        (the relearning attack scores the attacked model on the held-out half this way)."""
        return EvalContext(model, self.tokenizer, splits, template=self.template, batch_size=self.batch_size,
                           max_new_tokens=self.max_new_tokens, stop_strings=self.stop_strings, k=self.k,
                           reference=self.reference, dp=self.dp)

    # -- reference (retain oracle)
    def reference_forget_tr(self) -> list[float] | None:
        vbi = self.reference.get("forget_tr")
        if vbi is None:
            return None
        want = set(self.indices("forget"))
        return [v for i, v in vbi.items() if i in want]

    def reference_mia_min_k(self) -> float | None:
        return self.reference.get("mia_min_k")


# ----------------------------------------------------------------------------- loading helpers
def _resolve_model(model, tokenizer, what: str):
    if isinstance(model, (str, os.PathLike)):
        m, t = load_model(str(model))
        return m, t, str(model)
    if isinstance(model, tuple):
        m, t = model
        return m, t, getattr(getattr(m, "config", None), "_name_or_path", None) or type(m).__name__
    if tokenizer is None:
        raise R2FInputError(f"a tokenizer is needed with an in-memory {what}", source=what)
    return model, tokenizer, getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__


def _model_fingerprint(path: str | None) -> str | None:
    if path and Path(path).is_dir():
        try:
            return model_fingerprint(path)
        except Exception:  # pragma: no cover - informative only
            return None
    return None


def _load_splits(data_dir, forget_split: str, retain_split: str | None, max_items: int | None) -> tuple[dict, dict]:
    retain_split = retain_split or RETAIN_OF.get(forget_split)
    if retain_split is None:
        raise R2FInputError(f"no retain split known for '{forget_split}'; pass --retain-split", source="--forget")
    # world facts: the evaluation half, never the half that retain data may hold (r2f.data.loader.HALF_SPLITS),
    # so that utility is not measured on what an unlearning method was shown
    names = {"forget": forget_split, "retain": retain_split, "holdout": "holdout", "world_facts": WORLD_FACTS_EVAL}
    splits, skipped = {}, {}
    for logical, name in names.items():
        optional = logical in ("holdout", "world_facts")
        if optional and not split_exists(data_dir, name):
            skipped[logical] = f"split '{name}' not found in {data_dir}"
            continue
        # indices are positions in the split's file: a half's items keep the index they have in the whole file
        positions, items = load_split_positions(data_dir, name)
        if max_items is not None:
            positions, items = positions[:max_items], items[:max_items]
        splits[logical] = ([str(i) for i in positions], items)
    return splits, {"names": names, "skipped": skipped}


def _read_retain_log(retain_log, *, forget_split: str, n_forget: int, tok_sha: str) -> dict:
    src = str(retain_log) if isinstance(retain_log, (str, os.PathLike)) else "retain_log"
    if isinstance(retain_log, (str, os.PathLike)):
        p = Path(retain_log)
        if not p.is_file():
            raise R2FInputError("retain log not found", source=src)
        try:
            log = json.loads(read_text(p))
        except json.JSONDecodeError as exc:
            raise R2FInputError(f"malformed JSON: {exc.msg}", source=f"{src}:{exc.lineno}") from None
    else:
        log = retain_log
    if not isinstance(log, dict):
        raise R2FInputError("expected a JSON object (an eval.json)", source=src)
    # OpenUnlearning's TOFU_EVAL.json nests nothing; ours neither. Accept {"retain_model_logs": {...}} too.
    log = log.get("retain_model_logs", log)
    tr = log.get("forget_Truth_Ratio")
    vbi = tr.get("value_by_index") if isinstance(tr, dict) else None
    if not isinstance(vbi, dict) or not vbi:
        raise R2FInputError("field 'forget_Truth_Ratio.value_by_index': missing or empty", source=src)
    try:
        scores = {str(i): float(v["score"]) for i, v in vbi.items() if v is not None and v.get("score") is not None}
    except (TypeError, KeyError, ValueError, AttributeError):
        raise R2FInputError("field 'forget_Truth_Ratio.value_by_index': entries must be {\"score\": number}", source=src) from None
    meta = log.get("meta") or {}
    if meta.get("forget_split") and meta["forget_split"] != forget_split:
        raise R2FInputError(f"field 'meta.forget_split': log is for '{meta['forget_split']}', evaluating '{forget_split}'", source=src)
    if len(scores) != n_forget:
        raise R2FInputError(f"field 'forget_Truth_Ratio': {len(scores)} items, but the forget split has {n_forget}", source=src)
    if meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != tok_sha:
        raise R2FInputError("field 'meta.tokenizer_sha256': the retain model's tokenizer differs from the evaluated model's", source=src)
    mk = log.get("mia_min_k")
    mia = mk.get("agg_value") if isinstance(mk, dict) else None
    return {"forget_tr": scores, "mia_min_k": float(mia) if mia is not None else None, "source": "retain_log", "path": src}


def _dist_info() -> dict:
    return describe_processes()


def _sanitize(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- the suite
def requested_metrics(metrics: Iterable[str] | None, default: Sequence[str]) -> list[str]:
    """The metric names to compute: ``metrics`` if given (each must be registered), else ``default``."""
    names = list(metrics) if metrics is not None else list(default)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise R2FInputError(f"unknown metric(s): {', '.join(unknown)}", source="metrics")
    return names


def evaluate(
    model,
    data_dir: str | os.PathLike,
    *,
    tokenizer=None,
    retain_model=None,
    retain_tokenizer=None,
    retain_log: str | os.PathLike | dict | None = None,
    spec: EvalSpec | None = None,
    **settings: Any,
) -> dict:
    """Evaluate ``model`` on a world/TOFU directory; returns the eval.json dict.

    ``model``/``retain_model``: a model directory (or ``smollm2``), a ``(model, tokenizer)`` pair, or a
    model object with ``tokenizer=``/``retain_tokenizer=``. Give at most one of ``retain_model`` and
    ``retain_log`` (a previous eval.json of the retain model, ours or OpenUnlearning's TOFU_EVAL.json);
    without either, ``forget_quality`` is ``None`` and ``privleak`` uses the reference AUC 0.5.
    A retain model or log whose tokenizer differs from the evaluated one is refused (R2FInputError).
    Nothing is modified: relearning (``relearn`` steps > 0) trains a deep copy.

    The settings are one :class:`r2f.eval_spec.EvalSpec` (``spec=``), or its fields as keywords (``forget_split``
    and ``num_threads`` stand for its ``forget`` and ``threads``), e.g. ``evaluate(m, "world", forget_split=
    "forget05", max_items=48)``. ``threads``: torch intra-op threads during the evaluation (restored afterwards);
    by default 1 for models under 50M parameters, whose matrices are too small to gain from threads and lose up
    to 100x to OpenMP spin-waits on a busy CPU, unchanged otherwise.
    ``documents`` (a spec field): also the document metrics (r2f.eval.documents: verbatim extraction and the loss MIA)
    of the documents split of that name (``forget10`` → ``DATA/documents/forget10.jsonl``, with the retain and holdout
    documents beside it) or of a documents file.
    """
    spec = EvalSpec.of(spec, settings)
    if spec.bench != "world":
        raise R2FInputError("this suite evaluates the world; realfacts is r2f.eval.evaluate_realfacts", source="--bench")
    # Under torchrun every rank must call evaluate(): scoring and generation batches are split over the
    # ranks and gathered back in order (per-item numbers as in one process; EvalContext.dp); every rank
    # returns the result. The process group is read here, once, and handed down.
    dp = DataParallel.current()
    with torch_threads(spec.threads if spec.threads is not None else threads_for(model)):
        return _evaluate(model, data_dir, spec, tokenizer=tokenizer, retain_model=retain_model,
                         retain_tokenizer=retain_tokenizer, retain_log=retain_log, dp=dp)


def _evaluate(model, data_dir, spec: EvalSpec, *, tokenizer, retain_model, retain_tokenizer, retain_log,
              dp: DataParallel) -> dict:
    t0 = time.perf_counter()
    if retain_model is not None and retain_log is not None:
        raise R2FInputError("give either a retain model or a retain log, not both", source="--retain-log")
    names = requested_metrics(spec.metrics, DEFAULT_METRICS)
    forget_split, batch_size, max_new_tokens, k = spec.forget, spec.batch_size, spec.max_new_tokens, spec.k

    splits, split_info = _load_splits(data_dir, forget_split, spec.retain_split, spec.max_items)
    m, tok, ident = _resolve_model(model, tokenizer, "model")
    template = template_for(tok)
    tok_sha = tokenizer_fingerprint(tok)
    n_forget = len(splits["forget"][1])

    reference: dict = {}
    if retain_log is not None:
        reference = _read_retain_log(retain_log, forget_split=forget_split, n_forget=n_forget, tok_sha=tok_sha)
    elif retain_model is not None:
        rm, rtok, rident = _resolve_model(retain_model, retain_tokenizer, "retain model")
        if tokenizer_fingerprint(rtok) != tok_sha:
            raise R2FInputError("the retain model's tokenizer differs from the evaluated model's (vocab, special tokens or chat template)", source=str(rident))
        rctx = EvalContext(rm, rtok, {s: splits[s] for s in ("forget", "holdout") if s in splits}, template=template, batch_size=batch_size, k=k, dp=dp)
        tr = rctx.metric("forget_Truth_Ratio")["value_by_index"]
        mia = rctx.metric("mia_min_k")["agg_value"] if rctx.has("holdout") else None
        reference = {"forget_tr": {i: v["score"] for i, v in tr.items()}, "mia_min_k": mia, "source": "retain_model", "path": rident,
                     "model_fingerprint": _model_fingerprint(rident)}  # fmt: skip

    ctx = EvalContext(m, tok, splits, template=template, batch_size=batch_size, max_new_tokens=max_new_tokens, stop_strings=spec.stop_strings, k=k, reference=reference, dp=dp)
    result: dict[str, Any] = {}
    skipped_metrics = {}
    for name in names:
        if not ctx.available(name):
            skipped_metrics[name] = "needs split(s): " + ", ".join(sorted(s for s in METRICS[name].needs if not ctx.has(s)))
            continue
        result[name] = ctx.metric(name)

    if spec.relearn > 0:
        result["relearn"] = relearn_attack(ctx, steps=spec.relearn, lr=spec.relearn_lr, batch_size=spec.relearn_batch_size,
                                           seed=spec.seed)

    doc_meta = None
    if spec.documents is not None:
        doc_metrics, doc_meta = evaluate_documents(m, tok, data_dir, spec.documents, batch_size=batch_size,
                                                   max_items=spec.max_items)
        result.update(doc_metrics)
        names = names + list(doc_metrics)

    n_params = sum(p.numel() for p in m.parameters())
    result["summary"] = {n: result[n]["agg_value"] for n in names if n in result}
    result["meta"] = {
        "model": ident,
        "model_class": type(m).__name__,
        "model_fingerprint": _model_fingerprint(ident),
        "n_params": n_params,
        "template": template.kind,
        "tokenizer_sha256": tok_sha,
        "data_dir": str(data_dir),
        "forget_split": forget_split,
        "splits": split_info["names"],
        "world_facts_half": {"split": WORLD_FACTS_EVAL, "of": HALF_SPLITS[WORLD_FACTS_EVAL][0], "rule": HALVES_RULE,
                             "indices": splits["world_facts"][0] if "world_facts" in splits else []},
        "sizes": {s: len(v[1]) for s, v in splits.items()},
        "skipped_splits": split_info["skipped"],
        "skipped_metrics": skipped_metrics,
        "reference": {k2: v for k2, v in reference.items() if k2 != "forget_tr"} or None,
        "generation": {"max_new_tokens": max_new_tokens, "greedy": True, "stop_strings": list(ctx.stop_strings)},
        "batch_size": batch_size,
        "min_k": k,
        "spec": spec.to_dict(),  # how the result was computed: EvalSpec(**meta["spec"]) rebuilds the settings
        "model_utility_inputs": list(_metrics.UTILITY_INPUTS),
        "distributed": _dist_info(),
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    if doc_meta is not None:
        result["meta"]["documents"] = doc_meta
    # meta first, like a header
    ordered = {"meta": result.pop("meta"), "summary": result.pop("summary")}
    ordered.update(result)
    return _sanitize(ordered)
