"""Numerical faults of an unlearning step: detect a NaN/Inf, roll the step back, halve the step size.

Before each step the engine takes a :class:`Snapshot` of what the step may change (the watched weights, the
optimizer's state, the method's state). After it, :meth:`Rollback.fault` looks for a non-finite loss, gradient
or weight (under FSDP every rank agrees, r2f.fsdp.all_finite); on a fault :meth:`Rollback.roll_back` restores
the snapshot, halves :attr:`Rollback.step_scale` and records the failure, and the engine attempts the step
again. The ``max_failures``-th failure raises :class:`R2FNumericalError` with the weights at the last good step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from r2f.errors import R2FNumericalError
from r2f.fsdp import all_finite
from r2f.methods.base import Method
from r2f.methods.checkpoint import jsonable


@dataclass
class Snapshot:
    """Copies of what a step may change: the watched weights, the optimizer's state, the method's state."""

    weights: list[torch.Tensor]
    optimizer: dict | None
    method_tensors: dict[str, torch.Tensor]
    method_meta: Any


class Rollback:
    """The run's record of numerically failed steps and the step scale they left (1 halved per failure)."""

    def __init__(self, max_failures: int, *, step_scale: float = 1.0, failures: Sequence[dict] = ()):
        self.max_failures = max_failures
        self.step_scale = step_scale
        self.failures: list[dict] = list(failures)

    def record(self) -> dict[str, Any]:
        """What the manifest and the checkpoints keep (``numerics``)."""
        return {"max_failures": self.max_failures, "step_scale": self.step_scale, "failures": list(self.failures)}

    def retries(self, step: int) -> int:
        """How many times the 0-based ``step`` was rolled back."""
        return sum(1 for f in self.failures if f["step"] == step + 1)

    @staticmethod
    def snapshot(watched: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 method: Method) -> Snapshot:
        weights = [p.detach().clone() for p in watched]
        opt = None
        if optimizer is not None:
            sd = optimizer.state_dict()
            opt = {"state": {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                             for i, st in sd["state"].items()},
                   "param_groups": [dict(g) for g in sd["param_groups"]]}
        m_tensors, m_meta = method.state()
        return Snapshot(weights, opt, {k: v.detach().clone() for k, v in m_tensors.items()}, jsonable(m_meta))

    @staticmethod
    def fault(*, loss: torch.Tensor | None = None, grads: Sequence[torch.nn.Parameter] = (),
              model: torch.nn.Module | None = None) -> str | None:
        """Why the step failed (a non-finite ``loss``, gradient of ``grads``, or weight of ``model``), or None.

        FSDP: a shard's check alone could differ between ranks (one rolls back, the other goes on: a hang);
        all_finite agrees over every rank."""
        if loss is not None and not math.isfinite(float(loss.detach())):
            return f"loss is {float(loss.detach())}"
        if any(p.grad is not None and not all_finite(p.grad) for p in grads):
            return "gradient is not finite"
        if model is not None:
            bad = next((n for n, p in model.named_parameters() if not all_finite(p)), None)
            if bad is not None:
                return f"weight {bad} is not finite after the step"
        return None

    def roll_back(self, step: int, why: str, snap: Snapshot, watched: Sequence[torch.nn.Parameter],
                  optimizer: torch.optim.Optimizer | None, method: Method,
                  last_checkpoint: Callable[[], Path | None]) -> None:
        """Restore ``snap``, halve the step scale and record the failure of the 0-based ``step``; raise
        :class:`R2FNumericalError` at the ``max_failures``-th failure (naming the last good checkpoint)."""
        with torch.no_grad():
            for p, saved in zip(watched, snap.weights):
                p.copy_(saved)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            optimizer.load_state_dict(snap.optimizer)
        if snap.method_tensors or snap.method_meta:
            method.load_state(snap.method_tensors, snap.method_meta)
        self.step_scale *= 0.5
        self.failures.append({"step": step + 1, "reason": why, "step_scale": self.step_scale})
        if len(self.failures) >= self.max_failures:
            last = last_checkpoint()
            where = f"last good checkpoint: {last}" if last is not None else "no checkpoint (see --save-every)"
            raise R2FNumericalError(f"step {step + 1}: {why}; rolled back; {len(self.failures)} numerical failures "
                                    f"reached --max-failures {self.max_failures}; {where}")


__all__ = ["Rollback", "Snapshot"]
