"""Batches of QA items: which items a step sees, and their question views tokenised on a device.

- :func:`batch_indices`: the items of the ``step``-th batch of a stream, a pure function of ``(seed, stream,
  step)`` (epochs of seeded permutations), so a resumed run sees exactly the batches an uninterrupted one would;
- :func:`view_pairs` / :func:`encode_views`: the one builder of an item batch's K question views (the
  original question, then its paraphrases; an item with fewer views cycles through its own), each paired with
  the item's answer — as K batches (R2F's probe, the decoder's training pairs) or stacked into one (the
  baselines' ``views`` option);
- :class:`QAEncoder`: :func:`r2f.data.templates.encode_qa` with each question's prompt and each answer tokenised
  once per run (a run's batches draw the same questions, views and answers again and again);
- :class:`QABatch`: one step's items with those encodings, made lazily and kept.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Sequence

import torch

from r2f.data.schema import QAItem
from r2f.data.templates import PromptTemplate, answer_ids, collate_qa, pad_id, prompt_ids, template_for


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


def view_pairs(items: Sequence[QAItem], k: int, *, stacked: bool = False) -> list[tuple[list[str], list[str]]]:
    """The batch's first ``k`` question views as (questions, answers) lists: list ``v`` holds each item's v-th view
    (original, then paraphrases; an item with fewer views cycles through its own) with the item's answer. With
    ``stacked``, one pair of lists holding every view, view by view (view 0 alone when ``k == 1``)."""
    per_item = [it.views(k) for it in items]
    answers = [it.answer for it in items]
    views = [([vs[v % len(vs)] for vs in per_item], list(answers)) for v in range(max(1, k))]
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


__all__ = ["QABatch", "QAEncoder", "batch_indices", "encode_views", "view_pairs"]
