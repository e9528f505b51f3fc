"""Batches of forget/retain data: which records a step sees, and their K views tokenised on a device.

- :func:`batch_indices`: the items of the ``step``-th batch of a stream, a pure function of ``(seed, stream,
  step)`` (epochs of seeded permutations), so a resumed run sees exactly the batches an uninterrupted one would;
- :func:`cycled_views`: the one K-views builder. For QA items (:func:`view_pairs` / :func:`encode_views`) view ``v``
  is each item's v-th question view (the original question, then its paraphrases; an item with fewer views cycles
  through its own), paired with the item's answer — as K batches (R2F's probe, the decoder's training pairs) or
  stacked into one (the baselines' ``views`` option). For documents the same builder takes each
  :class:`DocUnit`'s (context, target) token views (:func:`document_units`, below);
- :class:`QAEncoder`: :func:`r2f.data.templates.encode_qa` with each question's prompt and each answer tokenised
  once per run (a run's batches draw the same questions, views and answers again and again);
- :class:`QABatch` / :class:`DocBatch`: one step's items with those encodings, made lazily and kept; both give
  ``inputs``, ``views(k)`` and ``stacked(k)``, so every method runs on either.

Documents (docs/world.md § Documents as forget data). A document's tokens (its text, then EOS) are cut into
fixed-length chunks of ``chunk_tokens`` tokens (a tail shorter than a quarter chunk joins the chunk before it when
the two fit ``max_length``);
each chunk is one *unit*, the thing a batch draws, as a QA item is. The loss of a unit is the LM loss on its own
tokens (labels on every chunk token, -100 on the context), and its views, in order, are:

1. the chunk alone (after BOS when the tokenizer has one): ``inputs``;
2. one per paraphrase the record supplies: the chunk at the same relative place of the paraphrase (each
   paraphrase is cut into as many chunks as the text, by token proportion);
3. prefix views: the same chunk after the ``stride``, ``2·stride`` and ``3·stride`` document tokens that precede it
   (``stride`` = ``chunk_tokens // 4``; as context, no loss), while the document has that many and the row fits
   ``max_length`` (a row is never longer than 1.75 chunks plus BOS: 225 tokens by default).

So the views of a unit are like the paraphrased questions of a QA item: the same tokens to forget, seen in other
contexts. The first chunk of a document without paraphrases has only view 1 (its views cycle, as a QA item's do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import torch

from r2f.data.schema import Document, QAItem
from r2f.data.templates import PromptTemplate, answer_ids, collate_qa, pad_id, prompt_ids, template_for
from r2f.errors import R2FInputError


def batch_indices(n: int, batch_size: int, seed: int, stream: int, step: int) -> list[int]:
    """Indices of the ``step``-th batch of a stream: epochs of seeded permutations, a pure function of its args."""
    bs = min(batch_size, n)
    per_epoch = math.ceil(n / bs)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + epoch) % (2**63))
    perm = torch.randperm(n, generator=g).tolist()
    chunk = perm[pos * bs:(pos + 1) * bs]
    if len(chunk) < bs:  # last, short batch of an epoch: fill from the start of the permutation
        chunk += perm[: bs - len(chunk)]
    return chunk


def cycled_views(per_item: Sequence[Sequence[Any]], k: int) -> list[list[Any]]:
    """The one K-views builder: list ``v`` (of ``max(1, k)``) holds each item's v-th view, an item with fewer views
    cycling through its own. ``per_item``: each item's views, original first."""
    return [[vs[v % len(vs)] for vs in per_item] for v in range(max(1, k))]


def view_pairs(items: Sequence[QAItem], k: int, *, stacked: bool = False) -> list[tuple[list[str], list[str]]]:
    """The batch's first ``k`` question views as (questions, answers) lists: list ``v`` holds each item's v-th view
    (original, then paraphrases; an item with fewer views cycles through its own) with the item's answer. With
    ``stacked``, one pair of lists holding every view, view by view (view 0 alone when ``k == 1``)."""
    answers = [it.answer for it in items]
    views = [(qs, list(answers)) for qs in cycled_views([it.views(k) for it in items], k)]
    if not stacked:
        return views
    return [([q for qs, _ in views for q in qs], [a for _, ans in views for a in ans])]


def encode_views(tokenizer, items: Sequence[QAItem], k: int, template: PromptTemplate | None = None,
                 max_length: int | None = 512, *, stacked: bool = False) -> list[dict[str, torch.Tensor]]:
    """The view batches of :func:`view_pairs`, tokenised (CPU tensors; each text once, :class:`QAEncoder`)."""
    encode = QAEncoder(tokenizer, template, max_length)
    return [encode(qs, ans) for qs, ans in view_pairs(items, k, stacked=stacked)]


class QAEncoder:
    """``encode_qa(tokenizer, questions, answers, template, max_length)`` (the same tensors) that keeps the token ids
    of every prompt and answer it has made: one tokenisation per text and run, then only padding."""

    def __init__(self, tokenizer, template: PromptTemplate | None = None, max_length: int | None = 512):
        self.tokenizer = tokenizer
        self.template = template or template_for(tokenizer)
        self.max_length = max_length
        self.pad = pad_id(tokenizer)
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}

    def __call__(self, questions: Sequence[str], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        if len(questions) != len(answers):
            raise ValueError("questions and answers differ in length")
        return collate_qa([(self._prompt(q), self._answer(a)) for q, a in zip(questions, answers)], self.pad,
                          self.max_length)

    def _prompt(self, question: str) -> list[int]:
        if question not in self._prompts:
            self._prompts[question] = prompt_ids(self.tokenizer, question, self.template)
        return self._prompts[question]

    def _answer(self, answer: str) -> list[int]:
        if answer not in self._answers:
            self._answers[answer] = answer_ids(self.tokenizer, answer, self.template)
        return self._answers[answer]


class QABatch:
    """A batch of QA items, tokenised lazily.

    ``inputs`` is the original question with its answer (view 0); ``views(k)`` gives ``k`` batches, the
    v-th holding each item's v-th question view (:func:`view_pairs`), always paired with the item's answer;
    ``stacked(k)`` gives those views as one batch. ``encoder``: a run's shared :class:`QAEncoder` (default: one
    of this batch's own).
    """

    def __init__(self, items: Sequence[QAItem], indices: Sequence[int], tokenizer, template: PromptTemplate,
                 max_length: int | None, device: torch.device, *, encoder: QAEncoder | None = None):
        self.items = list(items)
        self.indices = list(indices)
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.device = device
        self.encoder = encoder or QAEncoder(tokenizer, template, max_length)
        self._views: dict[int, list[dict]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def encode(self, questions: Sequence[str], answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        answers = [it.answer for it in self.items] if answers is None else answers
        return {k: v.to(self.device) for k, v in self.encoder(questions, answers).items()}

    @cached_property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self.encode([it.question for it in self.items])

    def views(self, k: int) -> list[dict[str, torch.Tensor]]:
        if k not in self._views:
            self._views[k] = [self.inputs if v == 0 else self.encode(qs, ans)
                              for v, (qs, ans) in enumerate(view_pairs(self.items, k))]
        return self._views[k]

    def stacked(self, k: int) -> dict[str, torch.Tensor]:
        """The first ``k`` views stacked into one batch, view by view (view 0 alone when ``k == 1``)."""
        return self.inputs if k <= 1 else self.encode(*view_pairs(self.items, k, stacked=True)[0])


# ----------------------------------------------------------------------------------------------- documents
#: Default chunk length of a document unit, in tokens (room for prefix views within a 256-position ladder model).
CHUNK_TOKENS = 128
#: Prefix views per unit at most (besides the chunk itself and the paraphrases).
MAX_PREFIX_VIEWS = 3

Ids = tuple[int, ...]


@dataclass(frozen=True)
class DocUnit:
    """One chunk of a document and its views as token ids: ``(context, target)`` pairs, the chunk alone first.

    ``doc``: the document's position in its file, ``chunk``: the chunk's position in the document, ``start``: its
    first token's position in the document's tokens."""

    doc: int
    chunk: int
    start: int
    view_ids: tuple[tuple[Ids, Ids], ...]

    @property
    def target(self) -> Ids:
        return self.view_ids[0][1]

    def views(self, k: int) -> list[tuple[Ids, Ids]]:
        """The first ``k`` views (at least one)."""
        return list(self.view_ids[: max(1, k)])


def _cut(ids: Sequence[int], width: int, limit: int | None = None) -> list[list[int]]:
    """``ids`` in chunks of ``width``; a tail shorter than ``width // 4`` joins the chunk before it (when the two fit
    in ``limit`` tokens)."""
    chunks = [list(ids[i:i + width]) for i in range(0, len(ids), width)]
    if len(chunks) > 1 and len(chunks[-1]) < max(1, width // 4) and (
            limit is None or len(chunks[-2]) + len(chunks[-1]) <= limit):
        tail = chunks.pop()
        chunks[-1] = chunks[-1] + tail
    return chunks


def _proportional(ids: Sequence[int], n: int) -> list[list[int]]:
    """``ids`` cut into ``n`` consecutive pieces by proportion (a paraphrase's chunks matching the text's)."""
    return [list(ids[len(ids) * i // n: len(ids) * (i + 1) // n]) for i in range(n)]


def document_tokens(tokenizer, text: str) -> list[int]:
    """A document's tokens: its text without special tokens, then EOS (the end is part of what is learned)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if ids and tokenizer.eos_token_id is not None else [])


def document_units(tokenizer, documents: Sequence[Document], chunk_tokens: int = CHUNK_TOKENS,
                   max_length: int | None = 512, *, locations: Sequence[str] | None = None) -> list[DocUnit]:
    """Every document's units (module docstring): chunks of ``chunk_tokens`` tokens and their views.

    ``locations``: where each document sits (``FILE:LINE``), named when one gives no token (exit 2)."""
    if chunk_tokens < 1:
        raise R2FInputError("must be at least 1", source="chunk_tokens")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    width = chunk_tokens if max_length is None else max(1, min(chunk_tokens, max_length - len(bos)))
    stride = max(1, width // 4)
    units = []
    for d, doc in enumerate(documents):
        ids = document_tokens(tokenizer, doc.text)
        if not ids:
            raise R2FInputError("field 'text': tokenizes to no tokens", source=locations[d] if locations else f"document {d}")
        chunks = _cut(ids, width, None if max_length is None else max_length - len(bos))
        paraphrased = [_proportional(document_tokens(tokenizer, p), len(chunks)) for p in doc.paraphrases]
        start = 0
        for c, chunk in enumerate(chunks):
            views = [(tuple(bos), tuple(chunk))]
            views += [(tuple(bos), tuple(pc[c])) for pc in paraphrased if pc[c]]
            room = start if max_length is None else min(start, max_length - len(bos) - len(chunk))
            for j in range(1, MAX_PREFIX_VIEWS + 1):
                if j * stride > room:
                    break
                views.append((tuple(bos + ids[start - j * stride:start]), tuple(chunk)))
            units.append(DocUnit(doc=d, chunk=c, start=start, view_ids=tuple(views)))
            start += len(chunk)
    return units


def shuffled_answer_pairs(items: Sequence[QAItem]) -> list[tuple[str, str]]:
    """(question, another item's answer): answers rotated by one within each ``kind`` (else over all items), pairs
    whose two answers are equal left out — a wrong fact in the trained format, what a model that never learned the
    items scores (R2F's ``shuffled`` stop threshold; the ledger's bar for "forgotten")."""
    groups: dict[object, list] = {}
    for it in items:
        groups.setdefault((it.model_extra or {}).get("kind"), []).append(it)
    if any(len(g) < 2 for g in groups.values()):
        groups = {None: list(items)}
    pairs = []
    for group in groups.values():
        for i, it in enumerate(group):
            other = group[(i + 1) % len(group)]
            if other.answer != it.answer:
                pairs.append((it.question, other.answer))
    return pairs


def shuffled_unit_pairs(units: Sequence[DocUnit], bos: Sequence[int] = ()) -> list[tuple[list[int], list[int]]]:
    """(context, target) pairs: a unit's first half, then the second half of the next document's unit at the same chunk
    position (its last one when it is shorter; the next unit when there is one document): the documents' analogue of
    a question with another item's answer (R2F's ``shuffled`` stop rule)."""
    by_doc: dict[int, list[DocUnit]] = {}
    for u in units:
        by_doc.setdefault(u.doc, []).append(u)
    docs = list(by_doc)
    pairs = []
    for i, u in enumerate(units):
        if len(docs) > 1:
            others = by_doc[docs[(docs.index(u.doc) + 1) % len(docs)]]
            other = others[min(u.chunk, len(others) - 1)].target
        else:
            other = units[(i + 1) % len(units)].target
        head, tail = u.target[: len(u.target) // 2], other[len(other) // 2:]
        if tail and tail != u.target[len(u.target) // 2:]:
            pairs.append((list(bos) + list(head), list(tail)))
    return pairs


class DocBatch:
    """A batch of document units, collated lazily: the same ``inputs`` / ``views(k)`` / ``stacked(k)`` as
    :class:`QABatch` (loss on the chunk's tokens, -100 on context and padding)."""

    def __init__(self, units: Sequence[DocUnit], indices: Sequence[int], pad: int, max_length: int | None,
                 device: torch.device):
        self.items = list(units)
        self.indices = list(indices)
        self.pad = pad
        self.max_length = max_length
        self.device = device
        self._views: dict[int, list[dict]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def collate(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, torch.Tensor]:
        batch = collate_qa([(list(c), list(t)) for c, t in pairs], self.pad, self.max_length)
        return {k: v.to(self.device) for k, v in batch.items()}

    @cached_property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self.collate([u.view_ids[0] for u in self.items])

    def views(self, k: int) -> list[dict[str, torch.Tensor]]:
        if k not in self._views:
            per_view = cycled_views([u.views(k) for u in self.items], k)
            self._views[k] = [self.inputs if v == 0 else self.collate(pairs) for v, pairs in enumerate(per_view)]
        return self._views[k]

    def stacked(self, k: int) -> dict[str, torch.Tensor]:
        """The first ``k`` views stacked into one batch, view by view (view 0 alone when ``k == 1``)."""
        if k <= 1:
            return self.inputs
        return self.collate([p for pairs in cycled_views([u.views(k) for u in self.items], k) for p in pairs])


def is_documents(items: Sequence[Any]) -> bool:
    """Whether a list of records holds documents (or their units) rather than QA items."""
    return bool(items) and isinstance(items[0], (Document, DocUnit))


__all__ = ["CHUNK_TOKENS", "DocBatch", "DocUnit", "QABatch", "QAEncoder", "batch_indices", "cycled_views",
           "document_tokens", "document_units", "encode_views", "is_documents", "shuffled_answer_pairs",
           "shuffled_unit_pairs", "view_pairs"]
