"""Document metrics, as MUSE measures a model's memory of a text corpus (the definitions in docs/metrics.md).

- **verbatim extraction** (``doc_<split>_extraction``): every document is cut into the units unlearning uses
  (:func:`r2f.data.batching.document_units`: chunks of ``chunk_tokens`` tokens); the model is given the first
  ``prefix_tokens`` tokens of a chunk (after BOS) and continues greedily for as many tokens as the chunk has left;
  the score is the ROUGE-L recall of the decoded continuation against the decoded true rest of the chunk (the
  scorer of the QA ROUGE, :func:`r2f.eval.functional.rouge_scores`). Per document: the mean over its chunks; the
  aggregate is the mean over documents. A model that reproduces the text scores 1.
- **loss MIA** (``doc_mia_loss``): a document's score is its per-token loss, the mean NLL over every token of its
  chunks (the chunk alone, as ``inputs`` of a unit); the AUC separates forget documents (label 0) from holdout
  documents never trained on (label 1), higher score = non-member, as the QA MIA metrics
  (:func:`r2f.eval.functional.auc`): 1 means the forget documents are clearly remembered, 0.5 indistinguishable.

Both come in eval.json's ``{agg_value, value_by_index}`` shape, indexed by the document's position in its file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from r2f.data.batching import CHUNK_TOKENS, DocBatch, DocUnit, document_units
from r2f.data.loader import RETAIN_OF, item_locations, load_documents
from r2f.data.templates import pad_id
from r2f.data.world import DOCUMENTS_DIR
from r2f.errors import R2FInputError
from r2f.eval import functional as F
from r2f.models.answer_nll import sequence_nll

#: Tokens of a chunk the model is given before it continues (MUSE's verbatim prompts are 32 tokens).
PREFIX_TOKENS = 32


def extraction_pairs(units: Sequence[DocUnit], bos: Sequence[int], eos: int | None,
                     prefix_tokens: int = PREFIX_TOKENS) -> list[tuple[int, list[int], list[int]]]:
    """(unit position, prompt ids, true continuation ids) of every unit with a continuation after its prefix; the
    document's closing EOS is not part of the continuation."""
    out = []
    for i, u in enumerate(units):
        target = list(u.target)
        if eos is not None and target and target[-1] == eos:
            target = target[:-1]
        if len(target) > prefix_tokens:
            out.append((i, list(bos) + target[:prefix_tokens], target[prefix_tokens:]))
    return out


@torch.inference_mode()
def greedy_continuations(model, prompts: Sequence[Sequence[int]], lengths: Sequence[int], *, pad: int,
                         eos: int | None, batch_size: int = 32) -> list[list[int]]:
    """Greedy continuation of each prompt, ``lengths[i]`` new tokens at most, cut at EOS (left-padded batches; the
    positions count from each row's first real token)."""
    model.eval()
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        width, steps = max(len(prompts[i]) for i in idx), max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, width - len(prompts[i]):] = torch.tensor(list(prompts[i]), dtype=torch.long)
            mask[j, width - len(prompts[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        done = torch.zeros(len(idx), dtype=torch.bool, device=device)
        new = []
        for _ in range(steps):
            pos = (mask.cumsum(1) - 1).clamp_min(0)
            nxt = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new.append(nxt)
            if eos is not None:
                done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if bool(done.all()):
                break
        gen = torch.stack(new, 1).tolist() if new else [[] for _ in idx]
        for j, i in enumerate(idx):
            toks = gen[j][: lengths[i]]
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos)]
            out[i] = toks
    return out


def per_document(units: Sequence[DocUnit], values: dict[int, float]) -> dict[str, float]:
    """Unit values (by unit position) → the mean per document (by the document's position in its file)."""
    sums: dict[int, list[float]] = {}
    for i, v in values.items():
        sums.setdefault(units[i].doc, []).append(v)
    return {str(d): sum(vs) / len(vs) for d, vs in sorted(sums.items())}


def extraction(model, tokenizer, units: Sequence[DocUnit], *, prefix_tokens: int = PREFIX_TOKENS,
               batch_size: int = 32) -> dict[str, Any]:
    """Verbatim extraction (module docstring): ``{agg_value, value_by_index: {doc: {"rougeL_recall": r}}}``."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = tokenizer.eos_token_id
    pairs = extraction_pairs(units, bos, eos, prefix_tokens)
    gens = greedy_continuations(model, [p for _, p, _ in pairs], [len(c) for _, _, c in pairs],
                                pad=pad_id(tokenizer), eos=eos, batch_size=batch_size)
    scores = {i: F.rouge_scores(tokenizer.decode(c, skip_special_tokens=True).strip(),
                                tokenizer.decode(g, skip_special_tokens=True).strip())["rougeL_recall"]
              for (i, _, c), g in zip(pairs, gens)}
    docs = per_document(units, scores)
    return {"agg_value": F.nanmean(docs.values()) if docs else None,
            "value_by_index": {d: {"rougeL_recall": v} for d, v in docs.items()}}


@torch.no_grad()
def document_losses(model, tokenizer, units: Sequence[DocUnit], *, batch_size: int = 32) -> dict[str, float]:
    """Per-token loss of each document: its chunks' summed token NLL over their token count."""
    model.eval()
    device = next(model.parameters()).device
    sums: dict[int, list[float]] = {}
    for b in range(0, len(units), batch_size):
        chunk = units[b: b + batch_size]
        s, n = sequence_nll(model, DocBatch(chunk, [], pad_id(tokenizer), None, device).inputs)
        for u, si, ni in zip(chunk, s.tolist(), n.tolist()):
            acc = sums.setdefault(u.doc, [0.0, 0.0])
            acc[0] += si
            acc[1] += ni
    return {str(d): (s / n if n else float("nan")) for d, (s, n) in sorted(sums.items())}


def mia_loss(forget: dict[str, float], holdout: dict[str, float]) -> dict[str, Any]:
    """Loss MIA of forget vs holdout documents, in the QA MIA metrics' shape."""
    a = F.auc(list(forget.values()), list(holdout.values()))
    return {"agg_value": a, "auc": a, "value_by_index": {i: {"score": v} for i, v in forget.items()},
            "forget": {"agg_value": F.nanmean(forget.values()),
                       "value_by_index": {i: {"score": v} for i, v in forget.items()}},
            "holdout": {"agg_value": F.nanmean(holdout.values()),
                        "value_by_index": {i: {"score": v} for i, v in holdout.items()}}}


def documents_path(data_dir: str | os.PathLike | None, split: str) -> Path:
    """A documents split: a file path as given, else ``DATA/documents/SPLIT.jsonl``."""
    if Path(split).suffix in (".json", ".jsonl", ".txt") and Path(split).is_file():
        return Path(split)
    if data_dir is None:
        raise R2FInputError(f"documents split '{split}' needs --data (or give a file)", source="--documents")
    return Path(data_dir) / DOCUMENTS_DIR / f"{split}.jsonl"


def evaluate_documents(model, tokenizer, data_dir: str | os.PathLike | None, split: str, *,
                       chunk_tokens: int = CHUNK_TOKENS, prefix_tokens: int = PREFIX_TOKENS,
                       batch_size: int = 32, max_items: int | None = None) -> tuple[dict[str, dict], dict]:
    """The document metrics of ``split`` (``forget10`` … or a file): its extraction, that of the complementary
    retain documents (other authors) when the world has them, that of the holdout documents, and the loss MIA forget
    vs holdout. Returns (metrics by name, what eval.json's meta records)."""
    if chunk_tokens < 1 or prefix_tokens < 1 or prefix_tokens >= chunk_tokens:
        raise R2FInputError("need 1 <= prefix_tokens < chunk_tokens", source="--documents")
    paths = {"forget": documents_path(data_dir, split)}
    if not paths["forget"].is_file():
        raise R2FInputError("documents split not found", source=str(paths["forget"]))
    for name, other in (("retain", RETAIN_OF.get(split)), ("holdout", "holdout")):
        if other is not None and data_dir is not None and documents_path(data_dir, other).is_file():
            paths[name] = documents_path(data_dir, other)
    units = {}
    for name, path in paths.items():
        docs = load_documents(path)[:max_items]
        units[name] = document_units(tokenizer, docs, chunk_tokens, None, locations=item_locations(path))
    out = {f"doc_{name}_extraction": extraction(model, tokenizer, u, prefix_tokens=prefix_tokens,
                                                batch_size=batch_size) for name, u in units.items()}
    if "holdout" in units:
        losses = {name: document_losses(model, tokenizer, units[name], batch_size=batch_size)
                  for name in ("forget", "holdout")}
        out["doc_mia_loss"] = mia_loss(losses["forget"], losses["holdout"])
    meta = {"split": split, "files": {k: str(v) for k, v in paths.items()}, "chunk_tokens": chunk_tokens,
            "prefix_tokens": prefix_tokens, "documents": {k: len({u.doc for u in v}) for k, v in units.items()},
            "units": {k: len(v) for k, v in units.items()}}
    return out, meta


__all__ = ["PREFIX_TOKENS", "document_losses", "documents_path", "evaluate_documents", "extraction",
           "extraction_pairs", "greedy_continuations", "mia_loss", "per_document"]
