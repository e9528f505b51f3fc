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
