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

from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch

from r2f.data.batching import QABatch
from r2f.methods.base import LossMethod, StepContext, register
from r2f.methods.config import MethodConfig, option
from r2f.methods.engine import Engine
from r2f.methods.losses import npo_loss, sequence_nll, simnpo_loss, token_mean_nll
from r2f.methods.reference import ReferenceNLL



def register_reference(engine: Engine, model, views: int,
                       relabel: Callable[[dict], dict] | None = None) -> ReferenceNLL:
    """Reference NLLs of the initial model on every forget sequence of the first ``views`` views; with ``relabel``,
    of the sequences as the forget loss will read them (R2F's fact tokens: ``r2f.methods.answer_tokens``)."""
    ref = ReferenceNLL()
    chunk = max(1, engine.config.batch_size)
    for i in range(0, len(engine.forget), chunk):
        b = engine.make_batch(engine.forget[i:i + chunk])
        batches = b.views(views) + ([b.stacked(views)] if views > 1 else [])
        ref.add(model, [relabel(x) for x in batches] if relabel else batches)
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


@dataclass(frozen=True)
class GradDiffShapeConfig(MethodConfig):
    """γ·forget + α·NLL(retain) over the stacked views: the options every method of that shape has."""

    gamma: float = option(1.0, "γ, the weight of the forget term")
    alpha: float = option(1.0, "α, the weight of the retain term (token-mean NLL of the retain batch)")
    views: int = option(1, "question views per forget item, stacked into one batch (view 0 is logged)")


@dataclass(frozen=True)
class ObjectiveConfig(GradDiffShapeConfig):
    """The GradDiff family's options (OpenUnlearning's defaults: GradDiff.yaml, NPO.yaml)."""

    beta: float = option(0.1, "β of NPO / SimNPO's log-sigmoid")
    delta: float = option(0.0, "δ, SimNPO's margin")


@dataclass(frozen=True)
class GradAscentConfig(ObjectiveConfig):
    alpha: float = option(0.0, "α, the weight of the retain term (0: gradient ascent alone)")


@dataclass(frozen=True)
class SimNPOConfig(ObjectiveConfig):
    gamma: float = option(0.125, "γ, the weight of the forget term (SimNPO.yaml)")
    beta: float = option(4.5, "β of SimNPO's log-sigmoid (SimNPO.yaml)")


@dataclass(frozen=True)
class LoRAConfig(GradAscentConfig):
    """GA through a rank-8 adapter by default (OpenUnlearning has no LoRA trainer; PEFT's usual r and α)."""

    objective: Literal["ga", "npo", "simnpo"] = option("ga", "forget objective trained through the adapter")
    rank: int = option(8, "LoRA rank r")
    lora_alpha: float = option(16.0, "LoRA scaling α (PEFT's lora_alpha)")
    lora_dropout: float = option(0.0, "dropout on the adapter's input")
    target_modules: str | list = option("all-linear", "modules that get an adapter (PEFT's target_modules)")


class ObjectiveMethod(LossMethod):
    """γ·forget_objective + α·NLL(retain): the GradDiff family of OpenUnlearning."""

    objective: str = "ga"
    config_class = ObjectiveConfig
    config: ObjectiveConfig
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
        return forget_objective(self.forget_name, model, inputs, ctx, beta=self.config.beta, delta=self.config.delta,
                                ref=self.ref, record=record)

    def loss(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> torch.Tensor:
        # The logged forget signal is view 0; with views > 1 the loss sees all views stacked and the
        # engine measures view 0 separately.
        inputs = forget.stacked(self.views)
        loss = self.config.gamma * self.forget_loss(model, inputs, ctx, record=self.views <= 1)
        if self.config.alpha and retain is not None:
            rs, rn = sequence_nll(model, retain.inputs)
            ctx.record(retain_nll=(rs / rn.clamp_min(1)).detach())
            loss = loss + self.config.alpha * token_mean_nll(rs, rn, ctx.dp)
        return loss


@register
class GradAscent(ObjectiveMethod):
    name = "grad_ascent"
    objective = "ga"
    config_class = GradAscentConfig


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
    config_class = SimNPOConfig


@register
class LoRAUnlearn(ObjectiveMethod):
    """LoRA-only unlearning: train a rank-r PEFT adapter with the forget objective, then merge it."""

    name = "lora"
    objective = "ga"
    config_class = LoRAConfig
    config: LoRAConfig
    default_lr = 2e-3

    def setup(self, engine: Engine):
        from peft import LoraConfig, get_peft_model  # here: a heavy import only this method needs

        self.ref = register_reference(engine, engine.model, self.views) if self.forget_name == "npo" else None
        if self.forget_name == "simnpo" and "beta" not in self._given:
            # SimNPO's own β default (the option's, 0.1, is NPO's): the options and the typed config say the same
            self.options["beta"] = 4.5
            self.config = replace(self.config, beta=4.5)
        cfg = LoraConfig(r=int(self.config.rank), lora_alpha=float(self.config.lora_alpha),
                         lora_dropout=float(self.config.lora_dropout), target_modules=self.config.target_modules,
                         bias="none", task_type="CAUSAL_LM")
        return get_peft_model(engine.model, cfg)

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._given = {k for k, v in options.items() if v is not None}

    def finalize(self, model):
        return model.merge_and_unload()
