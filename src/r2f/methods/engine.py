"""The unlearning engine: one loop for every method.

The engine owns everything that is not the method's own rule: the step budget, the learning-rate schedule and
optimizer (for loss-based methods), per-step logging of the forget and retain signals, seeding, the progress bar
and cost accounting, and it calls on one module per further concern:

- batching (``r2f.data.batching``): the forget and retain batches of a step, a pure function of
  ``(seed, step)``, and their K question views;
- the method protocol and registry (``r2f.methods.base``): :class:`LossMethod` (``loss`` → the engine
  back-propagates it and takes an AdamW step: OpenUnlearning's recipe, linear warm-up over the first 10 % of
  the steps, then linear decay to 0, weight decay 0.01 on matrices, gradient clipping at 1.0) and
  :class:`UpdateMethod` (``update`` changes the weights itself: R2F);
- checkpoints and resume (``r2f.methods.checkpoint``): safetensors plus JSON, never pickle; a resumed run sees
  exactly the batches an uninterrupted run would;
- numerical faults (``r2f.methods.numerics``): a NaN/Inf step is rolled back and retried at half the step size.

The data-parallel context is a value (:class:`r2f.distributed.DataParallel`) the engine holds and hands to
every step (``StepContext.dp``): batches are this rank's slices of the global batch, and the losses divide by
its global counts.

:meth:`Engine.run` reads top to bottom: set up, resume or measure the start, the steps, finalize.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from r2f.data.batching import CHUNK_TOKENS, DocBatch, DocUnit, QABatch, QAEncoder, batch_indices, document_units
from r2f.data.schema import Document, QAItem
from r2f.data.templates import PromptTemplate, pad_id, template_for
from r2f.distributed import DataParallel, all_reduce_sum_, barrier, global_sum
from r2f.errors import R2FInputError
from r2f.fsdp import is_sharded, merge_lora_shards, shard_model
from r2f.methods.base import METHODS, LossMethod, Method, StepContext, UpdateMethod, get_method, register
from r2f.methods.checkpoint import Checkpointer, jsonable, latest_checkpoint
from r2f.methods.cost import CostMeter
from r2f.methods.guard import self_made_retain
from r2f.methods.losses import sequence_nll
from r2f.methods.numerics import Rollback
from r2f.progress import progress


@dataclass
class EngineConfig:
    steps: int
    lr: float
    batch_size: int = 8
    seed: int = 0
    save_every: int = 0
    max_length: int | None = 512
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    keep_checkpoints: int = 1
    max_failures: int = 3         # numerically failed steps (NaN/Inf) after which the run stops (R2FNumericalError)
    summary_items: int = 64       # retain items in the start/end summary signals
    fsdp: bool = False            # shard the target with FSDP2 (r2f.fsdp) when more than one process runs
    chunk_tokens: int = CHUNK_TOKENS  # tokens per unit of a document (r2f.data.batching.document_units)


@dataclass
class RunResult:
    model: torch.nn.Module
    log: list[dict]
    steps_done: int
    stop_reason: str | None
    summary: dict[str, float]
    cost: dict[str, Any]
    resumed_from: int | None
    method_info: dict[str, Any] = field(default_factory=dict)
    prior_cost: dict[str, Any] | None = None  # cost of the interrupted session(s) up to the checkpoint
    numerics: dict[str, Any] = field(default_factory=dict)  # rolled-back steps and the resulting step scale


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def linear_schedule(step: int, total: int, warmup_ratio: float) -> float:
    """OpenUnlearning/HF's linear schedule: warm-up then linear decay to 0 (factor for 0-based ``step``)."""
    warm = max(1, round(warmup_ratio * total)) if warmup_ratio > 0 else 0
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


class Engine:
    """Runs ``method`` on ``model`` over ``forget`` (and ``retain``) for ``config.steps`` steps.

    ``dp``: the data-parallel context of the run, given by the caller (``r2f.methods.api.unlearn`` reads the
    process group once; one process: :data:`r2f.distributed.ONE_PROCESS`), never looked up here, so that what
    the losses divide by is visible where the engine is built; every batch is this rank's slice of the global
    batch when it is active.
    ``forget`` / ``retain``: QA items, or documents (:class:`r2f.data.schema.Document`, cut here into the units of
    :func:`r2f.data.batching.document_units`) or such units; batches of units are :class:`DocBatch` es.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, forget: Sequence[QAItem], retain: Sequence[QAItem] | None,
                 method: Method, config: EngineConfig, *, device: torch.device | str | None = None,
                 template: PromptTemplate | None = None, dp: DataParallel):
        self.dp = dp
        if not forget:
            raise R2FInputError("no forget items", source="--forget")
        if config.steps < 1:
            raise R2FInputError("must be at least 1", source="--steps")
        for what, n in (("forget", len(forget)), ("retain", len(retain or []))):
            if n and min(config.batch_size, n) < self.dp.world:
                raise R2FInputError(f"a {what} batch of {min(config.batch_size, n)} item(s) cannot be split over "
                                    f"{self.dp.world} processes; raise --batch-size or use fewer processes",
                                    source="--batch-size")
        self.model = model
        self.tokenizer = tokenizer
        self.forget = self._units(forget, config)
        self.retain = self._units(retain, config) if retain else []
        self.method = method
        self.config = config
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.template = template or template_for(tokenizer)
        # what the retain data are: the file's items, or (None) none yet. A method that needs retain data and got
        # no file makes its own from the target (r2f.methods.guard.self_made_retain: no training data needed)
        self.retain_source: str | None = "file" if retain else None
        if method.needs_retain and not retain:
            made, self.retain_source = self_made_retain(model, tokenizer, self.template, self.forget, seed=config.seed)
            self.retain = self._units(made, config)
        # one tokenisation per question view and answer for the whole run: every step's batches, the line search's
        # guard and forget-set NLLs and the start/end summaries draw the same texts again
        self.encoder = QAEncoder(tokenizer, self.template, config.max_length)
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: list[torch.nn.Parameter] = []
        self.rollback = Rollback(config.max_failures)
        self.checkpoints: Checkpointer | None = None
        self.sharded = False               # the model is FSDP-sharded (config.fsdp under a multi-process run)

    @property
    def step_scale(self) -> float:
        """1, halved after every numerically failed (rolled-back) step."""
        return self.rollback.step_scale

    @property
    def failures(self) -> list[dict]:
        """One entry per failed step attempt."""
        return self.rollback.failures

    # -- data -------------------------------------------------------------------------------------
    def _units(self, records: Sequence, config: EngineConfig) -> list:
        """QA items as given; documents as their units (chunks with views)."""
        records = list(records)
        if records and isinstance(records[0], Document):
            return document_units(self.tokenizer, records, config.chunk_tokens, config.max_length)
        return records

    def make_batch(self, items: Sequence[QAItem] | Sequence[DocUnit],
                   indices: Sequence[int] | None = None) -> QABatch | DocBatch:
        if items and isinstance(items[0], DocUnit):
            return DocBatch(items, indices or [], pad_id(self.tokenizer), self.config.max_length, self.device)
        return QABatch(items, indices or [], self.tokenizer, self.template, self.config.max_length, self.device,
                       encoder=self.encoder)

    def forget_batch(self, step: int) -> QABatch:
        idx = self.dp.slice(batch_indices(len(self.forget), self.config.batch_size, self.config.seed, 0, step))
        return self.make_batch([self.forget[i] for i in idx], idx)  # this rank's slice of the global batch

    def retain_batch(self, step: int) -> QABatch | None:
        if not self.retain:
            return None
        idx = self.dp.slice(batch_indices(len(self.retain), self.config.batch_size, self.config.seed, 1, step))
        return self.make_batch([self.retain[i] for i in idx], idx)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.forget) / min(self.config.batch_size, len(self.forget)))

    @torch.no_grad()
    def mean_nll(self, model, items: Sequence[QAItem], chunk: int | None = None) -> float:
        """Mean over items of the per-item mean answer-token NLL (the logged signal)."""
        return float(self.item_nlls(model, items, chunk).mean())

    def item_nlls(self, model, items: Sequence[QAItem], chunk: int | None = None) -> torch.Tensor:
        """Per item, its mean answer-token NLL (eval mode, ``chunk`` items a forward pass, no autograd graph: a
        measurement, never differentiated)."""
        chunk = chunk or max(1, self.config.batch_size)
        was_training = model.training
        model.eval()
        vals = []
        with torch.no_grad():
            for i in range(0, len(items), chunk):
                b = self.make_batch(items[i:i + chunk])
                s, n = sequence_nll(model, b.inputs)
                vals.append(s / n.clamp_min(1))
        model.train(was_training)
        return torch.cat(vals)

    def _summary_retain(self) -> list[QAItem]:
        return self.retain_sample(self.config.summary_items)

    def retain_sample(self, k: int) -> list[QAItem]:
        """``k`` retain items in a fixed seeded order (the first ``summary_items`` are the summary's items)."""
        if not self.retain:
            return []
        k = min(k, len(self.retain))
        g = torch.Generator().manual_seed(self.config.seed + 12_345)
        return [self.retain[i] for i in torch.randperm(len(self.retain), generator=g)[:k].tolist()]

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, ckpt_root: Path | None = None, *, resume: bool = False, run_key: dict | None = None,
            cost: CostMeter | None = None, desc: str | None = None) -> RunResult:
        """Run (or continue, with ``resume``) the loop; checkpoints go to ``ckpt_root/step-NNNNNNNN``."""
        own_meter = cost is None
        meter = cost or CostMeter(device=self.device)
        if own_meter:
            meter.__enter__()
        try:
            return self._run(meter, ckpt_root, resume, run_key or {}, desc)
        finally:
            if own_meter:
                meter.__exit__(None, None, None)

    def _run(self, meter: CostMeter, ckpt_root: Path | None, resume: bool, run_key: dict,
             desc: str | None) -> RunResult:
        cfg = self.config
        seed_everything(cfg.seed)
        with meter.stage("setup"):
            self._setup()
        if ckpt_root is not None:
            self.checkpoints = Checkpointer(ckpt_root, keep=cfg.keep_checkpoints, sharded=self.sharded,
                                            device=self.device, dp=self.dp)
        start, log, stop_reason, resumed_from, summary, prior_cost = 0, [], None, None, {}, None
        ckpt = self.checkpoints.latest() if (self.checkpoints is not None and resume) else None
        if ckpt is not None:
            with meter.stage("resume"):
                meta = self.checkpoints.load(ckpt, run_key, self.model, self.optimizer, self.method)
            start, log, stop_reason = meta["step"], meta["log"], meta.get("stop_reason")
            summary = meta.get("summary", {})
            resumed_from = start
            prior_cost = meta.get("cost")
            numerics = meta.get("numerics") or {}
            self.rollback = Rollback(cfg.max_failures, step_scale=float(numerics.get("step_scale", 1.0)),
                                     failures=numerics.get("failures", []))
        else:
            with meter.stage("measure"):
                summary["forget_nll_start"] = self.mean_nll(self.model, self.forget)
                if self.retain:
                    summary["retain_nll_start"] = self.mean_nll(self.model, self._summary_retain())

        self.summary = summary
        bar = progress(total=cfg.steps, desc=desc or f"unlearn[{self.method.name}]", initial=start)
        self.model.train()
        step = start
        with meter.stage("unlearn"):
            while step < cfg.steps and stop_reason is None:
                ctx, entry = self._step(step)
                if entry is None:
                    continue  # rolled back: the step is attempted again at half the step size
                log.append(_order(entry))
                stop_reason = self.method.should_stop(ctx, log)
                bar.set_postfix(refresh=False, **{k.split("_")[0]: f"{v:.3f}" for k, v in ctx.signals.items()
                                                  if k in ("forget_nll", "retain_nll")})
                bar.update(1)
                step += 1
                if self.checkpoints is not None and cfg.save_every > 0 and (
                        step % cfg.save_every == 0 or step == cfg.steps or stop_reason is not None):
                    with meter.stage("checkpoint"):
                        if self.dp.is_main or self.sharded:  # every rank holds the same weights and state
                            self.checkpoints.save(step, self.model, self.optimizer, self.method, {  # (FSDP: gathered)
                                "run_key": jsonable(run_key), "log": log, "stop_reason": stop_reason,
                                "summary": summary, "cost": meter.summary(), "numerics": self.rollback.record()})
                        barrier()
        bar.close()
        with meter.stage("finalize"):
            self.model.eval()
            if self.sharded:  # a LoRA adapter merges into each rank's rows (PEFT's merge needs whole weights)
                merge_lora_shards(self.model)
            model = self.method.finalize(self.model)
            summary["forget_nll_end"] = self.mean_nll(model, self.forget)
            if self.retain:
                summary["retain_nll_end"] = self.mean_nll(model, self._summary_retain())
        return RunResult(model=model, log=log, steps_done=len(log), stop_reason=stop_reason, summary=summary,
                         cost=meter.summary(), resumed_from=resumed_from, method_info=self.method.describe(),
                         prior_cost=prior_cost, numerics=self.rollback.record())

    def _setup(self) -> None:
        if self.config.fsdp and self.dp.active:
            # before the method's setup, so that its forward passes (reference NLLs, Σ statistics) and a
            # LoRA adapter see the sharded target; fully_shard moves each rank's rows to self.device
            self.model = shard_model(self.model, device=self.device)
            self.sharded = True
        self.model = self.method.setup(self) or self.model
        if self.method.optimizer == "adamw":  # the method's capability (r2f.methods.base.OPTIMIZERS)
            self.params = self.method.parameters(self.model)
            decay = [p for p in self.params if p.ndim >= 2]
            no_decay = [p for p in self.params if p.ndim < 2]
            groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}]
            self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.config.lr,
                                               betas=(0.9, 0.999), eps=1e-8)

    def _step(self, step: int) -> tuple[StepContext, dict[str, Any] | None]:
        """One step: its context and log entry, or (context, None) when it failed numerically and was rolled back."""
        cfg = self.config
        t0 = time.perf_counter()
        factor = linear_schedule(step, cfg.steps, cfg.warmup_ratio) if self.optimizer is not None else 1.0
        ctx = StepContext(step=step, total_steps=cfg.steps, lr=cfg.lr * factor * self.step_scale, seed=cfg.seed,
                          engine=self, dp=self.dp)
        watched = self.params or list(self.model.parameters())
        snap = Rollback.snapshot(watched, self.optimizer, self.method)
        forget, retain = self.forget_batch(step), self.retain_batch(step)
        if self.optimizer is not None:  # a loss to back-propagate for the optimizer, else the method's own update
            entry, why = self._loss_step(ctx, forget, retain)
        else:
            entry, why = self._update_step(ctx, forget, retain)
        if why is not None:
            last = self.checkpoints.latest if self.checkpoints is not None else (lambda: None)
            self.rollback.roll_back(step, why, snap, watched, self.optimizer, self.method, last)
            return ctx, None
        entry = {"step": step + 1, **entry}
        entry.update({k: v for k, v in ctx.signals.items() if k not in entry})
        if self.step_scale != 1.0:
            entry["step_scale"] = self.step_scale
            entry["retries"] = self.rollback.retries(step)
        entry["wall_s"] = round(time.perf_counter() - t0, 4)
        return ctx, entry

    def _loss_step(self, ctx: StepContext, forget: QABatch, retain: QABatch | None) -> tuple[dict, str | None]:
        """Back-propagate the method's loss (divided by global counts: gradients summed over ranks), clip, AdamW."""
        for g in self.optimizer.param_groups:
            g["lr"] = ctx.lr
        loss = self.method.loss(self.model, forget, retain, ctx)
        self._fill_signals(ctx, forget, retain)
        loss.backward()
        if self.dp.active:  # FSDP's backward already summed its sharded gradients (r2f.fsdp)
            all_reduce_sum_([p.grad for p in self.params if p.grad is not None and not is_sharded(p.grad)])
            loss = global_sum(loss.detach())
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm) \
            if self.config.max_grad_norm else None
        why = Rollback.fault(loss=loss, grads=self.params)
        if why is not None:
            return {}, why
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        why = Rollback.fault(model=self.model)
        if why is not None:
            return {}, why
        entry = {"loss": float(loss.detach()), "lr": ctx.lr}
        if gnorm is not None:
            entry["grad_norm"] = float(gnorm)
        return entry, None

    def _update_step(self, ctx: StepContext, forget: QABatch, retain: QABatch | None) -> tuple[dict, str | None]:
        """The method changes the weights itself (it all-reduces its probe gradients over ``ctx.dp``)."""
        self._fill_signals(ctx, forget, retain)
        extra = self.method.update(self.model, forget, retain, ctx) or {}
        reason = extra.pop("numerical_fault", None)
        why = reason if reason is not None else Rollback.fault(model=self.model)
        if why is not None:
            return {}, why
        return {k: (float(v) if torch.is_tensor(v) else v) for k, v in extra.items()}, None

    def _fill_signals(self, ctx: StepContext, forget: QABatch, retain: QABatch | None) -> None:
        """Forget/retain mean answer NLL on this step's batches, at the weights the step starts from."""
        need = [("forget_nll", forget)] + ([("retain_nll", retain)] if retain is not None else [])
        with torch.no_grad():
            for key, batch in need:
                if key not in ctx.signals:
                    s, n = sequence_nll(self.model, batch.inputs)
                    ctx.record(**{key: s / n.clamp_min(1)})

    # -- kept for callers of the engine's former helpers --------------------------------------------
    latest_checkpoint = staticmethod(latest_checkpoint)

    def numerics(self) -> dict[str, Any]:
        return self.rollback.record()


def _order(entry: dict) -> dict:
    first = ["step", "forget_nll", "retain_nll", "loss", "lr", "step_size"]
    return {**{k: entry[k] for k in first if k in entry}, **{k: v for k, v in entry.items() if k not in first}}


# The method protocol lives in r2f.methods.base and batches in r2f.data.batching; the names are importable from
# here too because method modules (r2f.methods.r2f and others) import them from the engine.
__all__ = ["Engine", "EngineConfig", "Method", "LossMethod", "UpdateMethod", "StepContext", "QABatch", "RunResult",
           "METHODS", "register", "get_method", "batch_indices", "linear_schedule", "seed_everything"]
