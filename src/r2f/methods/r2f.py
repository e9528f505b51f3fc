"""The R2F update: decoded LoRA-probe gradients → full-weight step, with a retain guard.

Per step (our design; the paper only fixes "a step along the decoded gradient of an unlearning loss"):

1. the forget batch's K question views (original + paraphrases, each with the item's answer);
2. decoded gradient D_f of the forget objective (mean over views), per probed Linear, from LoRA-probe
   gradients taken *at the current weights* (``r2f.decoders.decoded_gradients``);
3. retain guard (``guard="project"``): decoded gradient D_r of the retain NLL on the step's retain batch
   (same probe, same decoder); per module, when ⟨D_f, D_r⟩ < 0 (the forget step would raise the retain
   loss to first order) the conflicting component is removed, D_f ← D_f − ⟨D_f, D_r⟩/‖D_r‖²·D_r
   (PCGrad-style projection); then a retain-descent term λ·‖D_f‖/‖D_r‖·D_r is added (``retain_weight``
   λ = 1 by default: the retain direction gets the same norm as the guarded forget direction);
4. step-size rule (``step_norm="module"``): W ← W − η_t·‖W‖_F·D/‖D‖_F per module, i.e. a fixed *relative*
   change η_t of every probed weight matrix, so the decoder only has to get directions right, never
   scales; η_t decays from η (``--lr``) to ``min_step_ratio``·η on a cosine over the step budget;
5. stop rule (``stop="perturbed"``): stop once the mean forget NLL over the last epoch of steps reaches
   the initial model's mean NLL of the forget items' *perturbed* (plausible but wrong) answers, i.e. once
   the true answers are no more likely than wrong ones; otherwise the budget ends the run.

``exact`` is the same rule with exact gradients (the perfect-decoder oracle).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from r2f.errors import R2FInputError
from r2f.methods.baselines import register_reference
from r2f.methods.engine import Engine, QABatch, StepContext, UpdateMethod, register
from r2f.methods.losses import npo_loss, sequence_nll, token_mean_nll
from r2f.methods.reference import ReferenceNLL

DEFAULT_DECODER = "learned"
GUARDS = ("project", "none")
STOPS = ("shuffled", "perturbed", "none")
OBJECTIVES = ("ga", "npo")
STEP_NORMS = ("module", "global")


def _core():
    """The gradients/decoders API the method relies on (monkeypatched in unit tests)."""
    import r2f.decoders as decoders
    import r2f.gradients as gradients

    return decoders, gradients


def resolve_decoder(name_or_path: str | None):
    """Load a decoder by name or file; R2FInputError when unknown/unavailable."""
    decoders, _ = _core()
    spec = name_or_path or DEFAULT_DECODER
    try:
        return decoders.load_decoder(str(spec))
    except R2FInputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise R2FInputError(f"cannot load decoder: {exc}", source=str(spec)) from None


@register
class R2F(UpdateMethod):
    name = "r2f"
    needs_retain = False
    default_lr = 0.01  # η: relative step size per module, ‖ΔW‖ = η·‖W‖ at the first step
    defaults = {
        "decoder": None,          # decoder name or file (learned by default)
        "objective": "ga",        # ga | npo
        "beta": 0.1,              # NPO β
        "views": 4,               # K question views per forget item
        "rank": None,             # probe r_B (default: the decoder's, else 16)
        "rank_a": None,           # probe r_A (default: the decoder's, else 2·rank)
        "probe_seed": 0,
        "target_modules": None,   # regex of probed Linear names (default: attention + MLP projections)
        "aggregate": "mean",      # view aggregation: mean | momentum
        "guard": "project",       # retain guard: project | none
        "retain_weight": 1.0,     # λ of the added retain-descent term (relative to ‖D_f‖)
        "step_norm": "module",    # module | global
        "min_step_ratio": 0.1,    # η_T / η of the cosine decay
        "stop": "shuffled",       # stop rule: shuffled | perturbed | none
        "stop_nll": None,         # explicit stop threshold on the forget NLL (overrides stop=perturbed)
        "stop_window": 1,         # steps whose mean forget NLL is compared with the threshold
        "stats": "retain",        # Σ statistics for decoders that use them: retain (generic text) | batch
        "stats_items": 64,        # retain items the Σ statistics are collected over
    }

    def setup(self, engine: Engine):
        if self.objective not in OBJECTIVES:
            raise R2FInputError(f"unknown objective '{self.objective}' (choose from {', '.join(OBJECTIVES)})",
                                source="objective")
        if self.guard not in GUARDS:
            raise R2FInputError(f"unknown guard '{self.guard}' (choose from {', '.join(GUARDS)})", source="guard")
        if self.stop not in STOPS:
            raise R2FInputError(f"unknown stop rule '{self.stop}' (choose from {', '.join(STOPS)})", source="stop")
        if self.step_norm not in STEP_NORMS:
            raise R2FInputError(f"unknown step_norm '{self.step_norm}' ({'|'.join(STEP_NORMS)})", source="step_norm")
        _, gradients = _core()
        self.decoder_obj = resolve_decoder(self.decoder)
        model = engine.model
        self.probe = self._checked_probe(gradients, model)
        self.ref: ReferenceNLL | None = register_reference(engine, model, self.views) \
            if self.objective == "npo" else None
        self.stats = self._stats(engine, model, gradients)
        self.threshold = self._threshold(engine, model)
        self.window = max(1, int(self.stop_window))
        self.engine = engine
        return model

    # -- pieces -----------------------------------------------------------------------------------
    def _checked_probe(self, gradients, model):
        """The probe, validated against the model and the decoder before any step (R2FInputError: exit 2)."""
        import re

        try:
            probe = gradients.ProbeConfig(**self._probe_kwargs())
        except (TypeError, ValueError) as exc:
            raise R2FInputError(f"invalid probe: {exc}", source="--option rank/rank_a") from None
        try:
            linears = gradients.target_linears(model, probe.target_modules)
        except re.error as exc:
            raise R2FInputError(f"invalid regular expression {probe.target_modules!r}: {exc}",
                                source="--option target_modules") from None
        if not linears:
            raise R2FInputError(f"no linear module of the model matches the probe pattern {probe.target_modules!r}",
                                source="--option target_modules")
        kinds = {gradients.module_kind(n) for n, _ in linears}
        check = getattr(self.decoder_obj, "check_compatible", None)
        if check is not None:
            check(probe, kinds)  # rank, seed rule, module kinds of a learned decoder
        return probe

    def _probe_kwargs(self) -> dict[str, Any]:
        """Probe shape: explicit options, else what a learned decoder was trained with, else 16 / 2·16."""
        trained = (getattr(self.decoder_obj, "meta", None) or {}).get("probe", {}) or {}
        kw: dict[str, Any] = {"seed": int(self.probe_seed)}
        if self.rank is not None:
            kw["rank"] = int(self.rank)
            kw["rank_a"] = int(self.rank_a) if self.rank_a is not None else None
        else:
            kw["rank"] = int(trained.get("rank", 16))
            kw["rank_a"] = self.rank_a if self.rank_a is not None else trained.get("rank_a")
        if self.target_modules or trained.get("target_modules"):
            kw["target_modules"] = self.target_modules or trained["target_modules"]
        if "scale" in trained:
            kw["scale"] = float(trained["scale"])
        return kw

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"probe": self.probe.to_dict(), "stop_threshold": self.threshold,
                                "stats": None if self.stats is None else {"source": "retain",
                                                                          "tokens": self.stats.tokens}}
        spec = self.options.get("decoder") or DEFAULT_DECODER
        path = Path(str(spec))
        info["decoder"] = {"name": getattr(self.decoder_obj, "name", str(spec)),
                           "file": str(path) if path.is_file() else None,
                           "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None}
        return info

    def _stats(self, engine: Engine, model, gradients):
        """Input second moments Σ of the probed layers over retain text, once, at the initial weights.

        Decoders with a Σ prior (sigma, learned) are trained with Σ from generic text; retain data is the
        generic text an unlearning run has. ``stats="batch"`` leaves it to the step's own inputs.
        """
        if self.stats not in ("retain", "batch"):
            raise R2FInputError(f"unknown stats source '{self.stats}' (retain|batch)", source="stats")
        if self.stats != "retain" or not getattr(self.decoder_obj, "uses_stats", False) or not engine.retain:
            return None
        items = engine._summary_retain()[: int(self.stats_items)]
        batches = [engine.make_batch(items[i:i + 16]).inputs for i in range(0, len(items), 16)]
        return gradients.collect_input_stats(model, batches, self.probe, source="retain")

    def _threshold(self, engine: Engine, model) -> float | None:
        """Forget NLL at which to stop: the model's NLL of *wrong* answers to the forget questions.

        ``shuffled`` (default) pairs each forget question with another forget item's answer (same ``kind``
        when the data has it): a wrong fact in the very format the model was trained on, which is what a
        model that never learned the item scores. ``perturbed`` uses the data's perturbed answers (their
        phrasing may differ from the trained format, which raises the threshold).
        """
        if self.stop_nll is not None:
            return float(self.stop_nll)
        if self.stop == "none":
            return None
        pairs = _shuffled_pairs(engine.forget) if self.stop == "shuffled" else \
            [(it.question, wrong) for it in engine.forget for wrong in it.perturbed_answer]
        if not pairs:
            return None
        vals = []
        with torch.no_grad():
            for i in range(0, len(pairs), 16):
                chunk = pairs[i: i + 16]
                b = engine.make_batch([engine.forget[0]] * len(chunk))
                s, n = sequence_nll(model, b.encode([q for q, _ in chunk], [a for _, a in chunk]))
                vals += (s / n.clamp_min(1)).tolist()
        return sum(vals) / len(vals)

    def forget_loss(self, model, batch: dict) -> torch.Tensor:
        s, n = sequence_nll(model, batch)
        if self.objective == "npo":
            return npo_loss(s, self.ref.lookup(batch), self.beta)
        return -token_mean_nll(s, n)

    @staticmethod
    def retain_loss(model, batch: dict) -> torch.Tensor:
        return token_mean_nll(*sequence_nll(model, batch))

    def step_size(self, step: int, total: int, lr: float) -> float:
        if total <= 1:
            return lr
        c = 0.5 * (1 + math.cos(math.pi * step / (total - 1)))
        return lr * (self.min_step_ratio + (1 - self.min_step_ratio) * c)

    def decoded(self, model, batches: list[dict], loss_fn) -> dict[str, torch.Tensor]:
        decoders, _ = _core()
        from r2f.distributed import in_data_parallel

        # data-parallel step: the batches are this rank's slices; sketches are summed over ranks before decoding
        extra = {"reduce": True} if in_data_parallel() else {}
        return decoders.decoded_gradients(model, batches, self.decoder_obj, self.probe, loss_fn,
                                          aggregate=self.aggregate, stats=self.stats, **extra)

    # -- the hook ---------------------------------------------------------------------------------
    def update(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> dict[str, Any]:
        g_f = self.decoded(model, forget.views(self.views), self.forget_loss)
        g_r = self.decoded(model, [retain.inputs], self.retain_loss) \
            if (self.guard != "none" or self.retain_weight) and retain is not None else None
        eta = self.step_size(ctx.step, ctx.total_steps, ctx.lr)
        params = dict(model.named_parameters())
        directions: dict[str, torch.Tensor] = {}
        n_conflict, cos_sum = 0, 0.0
        for name, d in g_f.items():
            if name not in params:
                raise KeyError(f"decoded gradient for unknown parameter {name}")
            d = d.detach().float()
            if g_r is not None and name in g_r:
                r = g_r[name].detach().float()
                rr = float((r * r).sum())
                dot = float((d * r).sum())
                if rr > 0:
                    cos_sum += dot / math.sqrt(rr * max(float((d * d).sum()), 1e-30))
                    if self.guard == "project" and dot < 0:
                        d = d - (dot / rr) * r
                        n_conflict += 1
                    if self.retain_weight:
                        d = d + float(self.retain_weight) * (float(d.norm()) / math.sqrt(rr)) * r
            directions[name] = d
        for name, d in directions.items():  # the engine rolls the step back and retries with a smaller step
            if not bool(torch.isfinite(d).all()):
                return {"step_size": eta, "numerical_fault": f"decoded gradient of {name} is not finite"}
        with torch.no_grad():
            if self.step_norm == "global":
                w_norm = math.sqrt(sum(float(params[n].float().pow(2).sum()) for n in directions))
                d_norm = math.sqrt(sum(float(d.pow(2).sum()) for d in directions.values()))
                scale = {n: (eta * w_norm / d_norm if d_norm > 0 else 0.0) for n in directions}
            else:
                scale = {}
                for n, d in directions.items():
                    dn = float(d.norm())
                    scale[n] = eta * float(params[n].float().norm()) / dn if dn > 0 else 0.0
            for n, d in directions.items():
                if scale[n] and math.isfinite(scale[n]):
                    w = params[n]
                    w.sub_((scale[n] * d).to(w.dtype))
        out: dict[str, Any] = {"step_size": eta}
        if g_r is not None and directions:
            out["guard_conflicts"] = n_conflict / len(directions)
            out["cos_forget_retain"] = cos_sum / len(directions)
        return out

    def should_stop(self, ctx: StepContext, log: list[dict]) -> str | None:
        if self.threshold is None or len(log) < self.window:
            return None
        recent = [e["forget_nll"] for e in log[-self.window:]]
        mean = sum(recent) / len(recent)
        if mean >= self.threshold:
            what = "forget NLL" if self.window == 1 else f"forget NLL (mean of the last {self.window} steps)"
            return f"{what} {mean:.4f} reached the threshold {self.threshold:.4f}"
        return None


@register
class Exact(R2F):
    """The R2F rule with exact gradients: the perfect-decoder oracle."""

    name = "exact"
    defaults = {**R2F.defaults, "decoder": "exact"}

    def __init__(self, **options: Any):
        if options.get("decoder") not in (None, "exact"):
            raise R2FInputError("method 'exact' always uses the exact decoder; use --method r2f for others",
                                source="--decoder")
        super().__init__(**options)


def _shuffled_pairs(items) -> list[tuple[str, str]]:
    """(question, another item's answer): answers rotated by one within each ``kind`` (else over all items)."""
    groups: dict[object, list] = {}
    for it in items:
        groups.setdefault((it.model_extra or {}).get("kind"), []).append(it)
    if any(len(g) < 2 for g in groups.values()):
        groups = {None: list(items)}
    pairs = []
    for group in groups.values():
        for i, it in enumerate(group):
            other = group[(i + 1) % len(group)]
            if other.answer != it.answer:
                pairs.append((it.question, other.answer))
    return pairs
