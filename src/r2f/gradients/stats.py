"""Cheap forward statistics of the probed layers: the input second moment Σ = E[x xᵀ]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn

from r2f.gradients.probe import DEFAULT_PATTERN, ProbeConfig, target_linears


@dataclass
class InputStats:
    """Per probed module (keyed by module name): Σ = mean over non-pad tokens of x xᵀ (float32, n × n)."""

    sigma: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    source: str = ""

    def get(self, name: str) -> torch.Tensor | None:
        return self.sigma.get(name)


@torch.no_grad()
def collect_input_stats(
    model: nn.Module,
    batches: Iterable[dict],
    probe: ProbeConfig | None = None,
    *,
    source: str = "",
) -> InputStats:
    """Forward passes only: Σ of each probed Linear's input over the non-padding tokens of ``batches``."""
    pattern = probe.target_modules if probe is not None else DEFAULT_PATTERN
    targets = target_linears(model, pattern)
    sums: dict[str, torch.Tensor] = {}
    mask_box: dict[str, torch.Tensor | None] = {"mask": None}
    hooks = []

    def make_hook(name):
        def hook(mod, inputs):
            x2 = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            mask = mask_box["mask"]
            if mask is not None and mask.numel() == x2.shape[0]:
                x2 = x2[mask.reshape(-1).bool()]
            s = x2.t() @ x2
            sums[name] = s if name not in sums else sums[name] + s

        return hook

    for name, mod in targets:
        hooks.append(mod.register_forward_pre_hook(make_hook(name)))
    dev = next(model.parameters()).device
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = batch["attention_mask"].to(dev)
            mask_box["mask"] = mask
            model(input_ids=batch["input_ids"].to(dev), attention_mask=mask)
            tokens += int(mask.sum())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no tokens to collect input statistics from")
    return InputStats(sigma={k: v / tokens for k, v in sums.items()}, tokens=tokens, source=source)
