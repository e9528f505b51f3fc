"""Baseline unlearning methods with OpenUnlearning's losses and defaults.

Every baseline is ``loss = γ·forget_loss + α·retain_NLL`` (OpenUnlearning's ``GradDiff`` family):

========== ============================================================ ====================================
method     forget loss                                                  defaults (OpenUnlearning's)
========== ============================================================ ====================================
grad_ascent −NLL(forget) (token mean, HF's ``outputs.loss``)            γ = 1, α = 0
grad_diff  −NLL(forget)                                                 γ = α = 1
npo        −(2/β)·mean logσ(β·(NLL_θ − NLL_ref)), summed NLL per seq.   β = 0.1, γ = α = 1
simnpo     −(2/β)·mean logσ(β·(NLL_θ/|y| − δ))                          β = 4.5, δ = 0, γ = 0.125, α = 1
lora       any of the above forget losses through a rank-r LoRA adapter  GA, r = 8, lora_alpha = 16, α = 0
========== ============================================================ ====================================

The retain term is the token-mean NLL of the retain batch (``retain_loss_type: NLL``). All are trained
with AdamW by the engine; see ``docs/methods.md`` for our learning rates.
"""

from __future__ import annotations

from typing import Any

import torch

from r2f.data.batching import QABatch
from r2f.errors import R2FInputError
from r2f.methods.base import LossMethod, StepContext, register
from r2f.methods.engine import Engine
from r2f.methods.losses import npo_loss, sequence_nll, simnpo_loss, token_mean_nll
from r2f.methods.reference import ReferenceNLL

OBJECTIVES = ("ga", "npo", "simnpo")


def register_reference(engine: Engine, model, views: int) -> ReferenceNLL:
    """Reference NLLs of the initial model on every forget sequence of the first ``views`` views."""
    ref = ReferenceNLL()
    chunk = max(1, engine.config.batch_size)
    for i in range(0, len(engine.forget), chunk):
        b = engine.make_batch(engine.forget[i:i + chunk])
        ref.add(model, b.views(views) + ([b.stacked(views)] if views > 1 else []))
    return ref


def forget_objective(name: str, model, inputs: dict, ctx: StepContext, *, beta: float, delta: float = 0.0,
                     ref: ReferenceNLL | None = None, record: bool = True) -> torch.Tensor:
    """The forget loss ``name`` on ``inputs``; optionally records the batch's mean answer NLL as ``forget_nll``."""
    s, n = sequence_nll(model, inputs)
    if record:
        ctx.record(forget_nll=(s / n.clamp_min(1)).detach())
    if name == "ga":
        return -token_mean_nll(s, n, ctx.dp)
    if name == "npo":
        return npo_loss(s, ref.lookup(inputs), beta, ctx.dp)
    if name == "simnpo":
        return simnpo_loss(s, n, beta, delta, ctx.dp)
    raise ValueError(f"unknown forget objective {name!r}")


class ObjectiveMethod(LossMethod):
    """γ·forget_objective + α·NLL(retain): the GradDiff family of OpenUnlearning."""

    objective: str = "ga"
    defaults = {"gamma": 1.0, "alpha": 1.0, "beta": 0.1, "delta": 0.0, "views": 1}
    default_lr = 1e-3

    def setup(self, engine: Engine):
        self.ref = register_reference(engine, engine.model, self.views) if self.forget_name == "npo" else None
        return engine.model

    @property
    def forget_name(self) -> str:
        return self.options.get("objective", self.objective)

    def forget_loss(self, model, inputs: dict[str, torch.Tensor], ctx: StepContext, record: bool) -> torch.Tensor:
        """The forget term on ``inputs`` (γ is applied by :meth:`loss`); a method of this family with another
        forget loss (e.g. ``r2f.methods.wga``) overrides this alone and keeps the retain term and the views."""
        return forget_objective(self.forget_name, model, inputs, ctx, beta=self.beta, delta=self.delta, ref=self.ref,
                                record=record)

    def loss(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> torch.Tensor:
        # The logged forget signal is view 0; with views > 1 the loss sees all views stacked and the
        # engine measures view 0 separately.
        inputs = forget.stacked(self.views)
        loss = self.gamma * self.forget_loss(model, inputs, ctx, record=self.views <= 1)
        if self.alpha and retain is not None:
            rs, rn = sequence_nll(model, retain.inputs)
            ctx.record(retain_nll=(rs / rn.clamp_min(1)).detach())
            loss = loss + self.alpha * token_mean_nll(rs, rn, ctx.dp)
        return loss


@register
class GradAscent(ObjectiveMethod):
    name = "grad_ascent"
    objective = "ga"
    defaults = {**ObjectiveMethod.defaults, "alpha": 0.0}


@register
class GradDiff(ObjectiveMethod):
    name = "grad_diff"
    objective = "ga"
    needs_retain = True


@register
class NPO(ObjectiveMethod):
    name = "npo"
    objective = "npo"
    needs_retain = True


@register
class SimNPO(ObjectiveMethod):
    name = "simnpo"
    objective = "simnpo"
    needs_retain = True
    defaults = {**ObjectiveMethod.defaults, "beta": 4.5, "delta": 0.0, "gamma": 0.125}


@register
class LoRAUnlearn(ObjectiveMethod):
    """LoRA-only unlearning: train a rank-r PEFT adapter with the forget objective, then merge it."""

    name = "lora"
    objective = "ga"
    defaults = {**ObjectiveMethod.defaults, "alpha": 0.0, "objective": "ga", "rank": 8, "lora_alpha": 16.0,
                "lora_dropout": 0.0, "target_modules": "all-linear"}
    default_lr = 2e-3

    def setup(self, engine: Engine):
        from peft import LoraConfig, get_peft_model  # here: a heavy import only this method needs

        if self.forget_name not in OBJECTIVES:
            raise R2FInputError(f"unknown objective '{self.forget_name}' (choose from {', '.join(OBJECTIVES)})",
                                source="objective")
        self.ref = register_reference(engine, engine.model, self.views) if self.forget_name == "npo" else None
        if self.forget_name == "simnpo" and "beta" not in self._given:
            self.options["beta"] = 4.5
        cfg = LoraConfig(r=int(self.rank), lora_alpha=float(self.lora_alpha), lora_dropout=float(self.lora_dropout),
                         target_modules=self.target_modules, bias="none", task_type="CAUSAL_LM")
        return get_peft_model(engine.model, cfg)

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._given = {k for k, v in options.items() if v is not None}

    def finalize(self, model):
        return model.merge_and_unload()
