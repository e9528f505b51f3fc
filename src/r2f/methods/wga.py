"""WGA — Weighted Gradient Ascent (Wang et al., 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond"), as OpenUnlearning implements it (``trainer/unlearn/wga.py``, ``configs/trainer/WGA.yaml``).

Gradient ascent whose every answer token is weighted by the model's own current probability of it, raised to β
and held constant (no gradient through the weight):

    forget_loss = −(1/T)·Σ_t p_θ(y_t)^β · NLL_t      over the T answer tokens of the batch

so tokens the model has already stopped predicting stop pushing, which keeps ascent from running away. The total
is OpenUnlearning's GradDiff shape, ``γ·forget_loss + α·NLL(retain)`` (token mean), with its defaults β = 1,
γ = 1, α = 1. OpenUnlearning trains it at lr 1e-5 on 7B-parameter TOFU models; ours is 1e-3 like every
full-parameter baseline here, for the same reason (docs/methods.md, "Learning rates").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r2f.distributed import ONE_PROCESS, DataParallel
from r2f.methods.baselines import GradDiffShapeConfig, ObjectiveMethod
from r2f.methods.config import option
from r2f.methods.engine import StepContext, register
from r2f.models.answer_nll import answer_token_nll_flat, row_sums


def wga_loss(token_nll: torch.Tensor, n_tokens: torch.Tensor, beta: float,
             dp: DataParallel = ONE_PROCESS) -> torch.Tensor:
    """−mean over the batch's answer tokens of ``p^β·NLL`` with ``p = exp(−NLL)`` detached.

    ``n_tokens`` is the per-sequence answer-token count; with an active ``dp`` the mean divides by the global
    count, so the ranks' gradients sum to the one-process gradient."""
    weight = torch.exp(-token_nll.detach()) ** beta
    return -(weight * token_nll).sum() / dp.count(n_tokens.sum()).clamp_min(1)


@dataclass(frozen=True)
class WGAConfig(GradDiffShapeConfig):
    """OpenUnlearning's WGA.yaml; no δ (SimNPO's margin means nothing here)."""

    beta: float = option(1.0, "β, the power of each answer token's probability that weights its NLL")


@register
class WGA(ObjectiveMethod):
    name = "wga"
    objective = "wga"
    needs_retain = True
    config_class = WGAConfig
    config: WGAConfig

    def forget_loss(self, model, inputs: dict[str, torch.Tensor], ctx: StepContext, record: bool) -> torch.Tensor:
        nll, rows, counts = answer_token_nll_flat(model, inputs)
        if record:
            ctx.record(forget_nll=row_sums(nll.detach(), rows, counts.shape[0]) / counts.clamp_min(1))
        return wga_loss(nll, counts, float(self.config.beta), ctx.dp)
