"""Batches of QA items: which items a step sees, and their question views tokenised on a device.

- :func:`batch_indices`: the items of the ``step``-th batch of a stream, a pure function of ``(seed, stream,
  step)`` (epochs of seeded permutations), so a resumed run sees exactly the batches an uninterrupted one would;
- :func:`view_pairs` / :func:`encode_views`: the one builder of an item batch's K question views (the
  original question, then its paraphrases; an item with fewer views cycles through its own), each paired with
  the item's answer — as K batches (R2F's probe, the decoder's training pairs) or stacked into one (the
  baselines' ``views`` option);
- :class:`QABatch`: one step's items with those encodings, made lazily and kept.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Sequence

import torch

from r2f.data.schema import QAItem
from r2f.data.templates import PromptTemplate, encode_qa, template_for


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
    """The view batches of :func:`view_pairs`, tokenised (CPU tensors)."""
    template = template or template_for(tokenizer)
    return [encode_qa(tokenizer, qs, ans, template, max_length=max_length)
            for qs, ans in view_pairs(items, k, stacked=stacked)]


class QABatch:
    """A batch of QA items, tokenised lazily.

    ``inputs`` is the original question with its answer (view 0); ``views(k)`` gives ``k`` batches, the
    v-th holding each item's v-th question view (:func:`view_pairs`), always paired with the item's answer;
    ``stacked(k)`` gives those views as one batch.
    """

    def __init__(self, items: Sequence[QAItem], indices: Sequence[int], tokenizer, template: PromptTemplate,
                 max_length: int | None, device: torch.device):
        self.items = list(items)
        self.indices = list(indices)
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.device = device
        self._views: dict[int, list[dict]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def encode(self, questions: Sequence[str], answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        answers = [it.answer for it in self.items] if answers is None else answers
        enc = encode_qa(self.tokenizer, questions, answers, self.template, max_length=self.max_length)
        return {k: v.to(self.device) for k, v in enc.items()}

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


__all__ = ["QABatch", "batch_indices", "encode_views", "view_pairs"]
