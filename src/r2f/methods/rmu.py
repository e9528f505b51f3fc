"""RMU — Representation Misdirection for Unlearning (Li et al., 2024, "The WMDP Benchmark"), as OpenUnlearning
implements it (``trainer/unlearn/rmu.py``, ``configs/trainer/RMU.yaml``).

At one chosen module (a decoder layer; its output hidden state), on the answer positions of each batch:

- forget: the model's activations are pulled to a fixed random vector ``u`` — uniform in [0, 1)^d, scaled to
  norm ``steering_coeff`` and drawn once per run — so the layers above see noise where the forget answer was;
- retain (``retain_loss_type: EMBED_DIFF``): the activations are held to those of the frozen initial model.

Both terms are ``mean over sequences of (Σ_answer tokens mean_d (a − target)²) / #answer tokens``, and the
loss is ``γ·forget + α·retain``. Defaults are OpenUnlearning's: ``module_regex = model\\.layers\\.7``,
``steering_coeff = 2``, ``γ = 1``, ``α = 1``, every parameter trainable (``trainable_params_regex = .*``).
Layer 7 is for OpenUnlearning's 32-layer models: on a model that has no such module, pass ``module_regex``
(the demo uses ``model\\.layers\\.1``). The learning rate is ours, 1e-3 like every full-parameter baseline
(docs/methods.md). The frozen model is a full copy held in memory, as OpenUnlearning's reference model is.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch

from r2f.errors import R2FInputError
from r2f.methods.engine import Engine, LossMethod, QABatch, StepContext, register
from r2f.methods.config import MethodConfig, option
from r2f.methods.losses import seq_mean


def control_vector(dim: int, steering_coeff: float, seed: int) -> torch.Tensor:
    """RMU's fixed random direction (1, 1, dim): uniform [0, 1) entries, norm ``steering_coeff``; a pure function
    of ``seed``, so a resumed run steers to the same vector without checkpointing it."""
    g = torch.Generator().manual_seed(seed + 7_211)
    u = torch.rand(1, 1, dim, generator=g)
    return u / u.norm() * steering_coeff


def activation_distance(act: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence: (Σ over masked positions of mean_d (act − target)²) / #masked positions. The loss term is
    their mean over sequences (``seq_mean``: a rank's share of the global mean in a data-parallel step)."""
    per_pos = (act.float() - target.float()).pow(2).mean(-1)
    return (per_pos * mask).sum(1) / mask.sum(1).clamp_min(1)


def find_module(model: torch.nn.Module, pattern: str) -> torch.nn.Module:
    """The one module whose qualified name fully matches ``pattern``; bad input (naming the option) otherwise."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise R2FInputError(f"not a regular expression: {exc}", source="module_regex") from None
    found = [(n, m) for n, m in model.named_modules() if regex.fullmatch(n)]
    if len(found) != 1:
        layers = [n for n, _ in model.named_modules() if re.fullmatch(r".*\.\d+", n) and n.count(".") <= 2]
        what = "no module" if not found else f"{len(found)} modules ({', '.join(n for n, _ in found[:4])})"
        raise R2FInputError(f"{what} of the model match '{pattern}'; one is needed, e.g. one of "
                            f"{', '.join(layers[:6]) or 'its submodules'}", source="module_regex")
    return found[0][1]


def layer_output(model: torch.nn.Module, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The output hidden state of ``module`` in a forward pass of ``model`` (grad as the caller's mode allows)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return seen[0]


@dataclass(frozen=True)
class RMUConfig(MethodConfig):
    """OpenUnlearning's RMU.yaml."""

    module_regex: str = option(r"model\.layers\.7", "the one module (a decoder layer) whose output is steered")
    steering_coeff: float = option(2.0, "norm of the random control vector the forget activations are pulled to")
    gamma: float = option(1.0, "γ, the weight of the forget term")
    alpha: float = option(1.0, "α, the weight of the retain term (activations held to the frozen model's)")
    trainable_params_regex: str = option(".*", "parameters trained (full match of the name)")


@register
class RMU(LossMethod):
    name = "rmu"
    config_class = RMUConfig
    config: RMUConfig
    default_lr = 1e-3
    needs_retain = True
    supports_fsdp = False  # setup deep-copies the target (the frozen model), which FSDP forbids

    def setup(self, engine: Engine) -> torch.nn.Module:
        model = engine.model
        self.module = find_module(model, str(self.config.module_regex))
        # the frozen initial model (setup runs before a checkpoint is loaded: these are the source weights)
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
        self.frozen_module = dict(self.frozen.named_modules())[
            next(n for n, m in model.named_modules() if m is self.module)]
        self.seed = engine.config.seed
        return model

    def parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        keep = re.compile(str(self.config.trainable_params_regex))
        params = [p for n, p in model.named_parameters() if p.requires_grad and keep.fullmatch(n)]
        if not params:
            raise R2FInputError("matches no parameter of the model", source="trainable_params_regex")
        return params

    def loss(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> torch.Tensor:
        f_in = forget.inputs
        act = layer_output(model, self.module, f_in)
        target = control_vector(act.shape[-1], float(self.config.steering_coeff), self.seed).to(act.device)
        forget_dist = activation_distance(act, target.expand_as(act), f_in["labels"] != -100)
        ctx.record(rmu_forget=forget_dist.detach())  # logged per step, like forget_nll
        loss = self.config.gamma * seq_mean(forget_dist, ctx.dp)
        if self.config.alpha and retain is not None:
            r_in = retain.inputs
            with torch.no_grad():
                frozen = layer_output(self.frozen, self.frozen_module, r_in)
            retain_dist = activation_distance(layer_output(model, self.module, r_in), frozen, r_in["labels"] != -100)
            ctx.record(rmu_retain=retain_dist.detach())
            loss = loss + self.config.alpha * seq_mean(retain_dist, ctx.dp)
        return loss

    def describe(self) -> dict[str, Any]:
        return {"module": next(n for n, m in self.frozen.named_modules() if m is self.frozen_module)}
