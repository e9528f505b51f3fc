"""Reference NLLs of the initial model, for NPO-style objectives.

OpenUnlearning's NPO keeps a frozen copy of the initial model and runs it on every forget batch. The
reference only ever sees forget sequences, which are known before the first step, so r2f runs that
copy once over every forget sequence (every view the method will use) at the start and keeps the
per-sequence summed NLLs: the same numbers, without a second model in memory. Values are looked up by
the row's token content, so any batching (or sub-batching inside a gradient routine) finds them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from r2f.data.templates import IGNORE_INDEX
from r2f.methods.losses import sequence_nll
from r2f.models.answer_nll import answer_token_logits


def row_key(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> bytes:
    n = int(attention_mask.sum()) if attention_mask is not None else input_ids.numel()
    return (input_ids[:n].cpu().to(torch.int64).numpy().tobytes() + b"|"
            + (labels[:n] != IGNORE_INDEX).cpu().numpy().tobytes())


class ReferenceNLL:
    def __init__(self) -> None:
        self.table: dict[bytes, float] = {}

    @torch.no_grad()
    def add(self, model, batches: Sequence[dict]) -> None:
        was_training = model.training
        model.eval()
        for b in batches:
            s, _ = sequence_nll(model, b)
            for i in range(b["input_ids"].size(0)):
                mask = b["attention_mask"][i] if "attention_mask" in b else None
                self.table[row_key(b["input_ids"][i], b["labels"][i], mask)] = float(s[i])
        model.train(was_training)

    def lookup(self, batch: dict) -> torch.Tensor:
        out = []
        for i in range(batch["input_ids"].size(0)):
            key = row_key(batch["input_ids"][i], batch["labels"][i],
                          batch["attention_mask"][i] if "attention_mask" in batch else None)
            if key not in self.table:
                raise KeyError("no reference NLL for a forget sequence (was it registered at setup?)")
            out.append(self.table[key])
        return torch.tensor(out, dtype=torch.float32, device=batch["input_ids"].device)

    def __len__(self) -> int:
        return len(self.table)


def coarse_kl(logp_start: torch.Tensor, logp_now: torch.Tensor) -> torch.Tensor:
    """Per token, KL(start ‖ now) over the start's ``k`` most likely tokens plus the rest of the mass as one
    outcome (tokens × k log-probabilities, the same tokens in both): a lower bound of the full KL, as a coarsening
    never raises a KL."""
    p_start = logp_start.exp()
    tail_start = (1 - p_start.sum(1)).clamp_min(1e-12)
    tail_now = (1 - logp_now.exp().sum(1)).clamp_min(1e-12)
    return (p_start * (logp_start - logp_now)).sum(1) + tail_start * (tail_start.log() - tail_now.log())


class ReferenceTopK:
    """The initial model's ``k`` most likely next tokens and their log-probabilities at every answer token of
    registered sequences, looked up by row content as :class:`ReferenceNLL`: a KL to the initial model without a
    second model in memory."""

    def __init__(self, k: int = 32) -> None:
        self.k = k
        self.table: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def add(self, model, batches: Sequence[dict]) -> None:
        was_training = model.training
        model.eval()
        for b in batches:
            logits, _, rows, _ = answer_token_logits(model, b)
            top = torch.log_softmax(logits.float(), -1).topk(min(self.k, logits.shape[-1]), dim=-1)
            for i in range(b["input_ids"].size(0)):
                mask = b["attention_mask"][i] if "attention_mask" in b else None
                here = rows == i
                self.table[row_key(b["input_ids"][i], b["labels"][i], mask)] = (top.indices[here].cpu(),
                                                                                top.values[here].cpu())
        model.train(was_training)

    def lookup(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, log-probs), answer tokens × k, rows in batch order (as ``answer_token_logits`` gives them)."""
        ids, logp = [], []
        for i in range(batch["input_ids"].size(0)):
            key = row_key(batch["input_ids"][i], batch["labels"][i],
                          batch["attention_mask"][i] if "attention_mask" in batch else None)
            if key not in self.table:
                raise KeyError("no reference distribution for a retain sequence (was it registered at setup?)")
            ids.append(self.table[key][0])
            logp.append(self.table[key][1])
        dev = batch["input_ids"].device
        return torch.cat(ids).to(dev), torch.cat(logp).to(dev)
