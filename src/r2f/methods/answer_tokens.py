"""Which answer tokens the R2F forget loss reads: the facts, not the format words every answer shares.

A TOFU-style answer mixes the fact ("Rosmoor", "1978") with words many answers share ("On", "in", ",", "The").
Raising the NLL of the whole answer also lowers the probability of *wrong* answers of the same kind, which share
those words: the unlearned model still prefers the true answer to a wrong one (its truth ratios stay well below
the retain oracle's) although it no longer reproduces it. ``answer_tokens="fact"`` drops from the forget loss
the **format tokens**: token ids found in at least ``format_share`` of the answers the run holds (the forget
items and the guard's retain items, from the file or self-answered; docs/methods.md, tenth round, has the
measurements).

Below ``2 / format_share`` answers in all, a share cannot tell a format word from a fact seen twice: no token is
format. A row whose answer tokens are all format tokens keeps them all. Only the forget *loss* changes: the line
search, the stop rule and the logged NLLs still read every answer token.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch

from r2f.data.templates import IGNORE_INDEX


def format_token_ids(answers: Iterable[Sequence[int]], share: float) -> torch.Tensor:
    """Token ids found in at least ``share`` of ``answers`` (each an answer's token ids); empty below
    ``2 / share`` answers."""
    sets = [set(ids) for ids in answers]
    if len(sets) < 2.0 / share:
        return torch.tensor([], dtype=torch.long)
    counts = Counter(t for s in sets for t in s)
    return torch.tensor(sorted(t for t, c in counts.items() if c >= share * len(sets)), dtype=torch.long)


def fact_labels(batch: dict, format_ids: torch.Tensor) -> dict:
    """``batch`` with its format answer tokens ignored (label ``IGNORE_INDEX``); a row whose answer is all format
    tokens keeps every label."""
    labels = batch["labels"]
    answer = labels != IGNORE_INDEX
    fmt = answer & torch.isin(labels, format_ids.to(labels.device))
    has_fact = (answer & ~fmt).any(dim=1, keepdim=True)
    return {**batch, "labels": labels.masked_fill(fmt & has_fact, IGNORE_INDEX)}
