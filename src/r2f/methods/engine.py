"""The unlearning engine: one loop for every method.

The engine owns everything that is not the method's own rule: deterministic batching of forget and
retain data, the step budget, the learning-rate schedule and optimizer (for loss-based methods),
per-step logging of the forget and retain signals, checkpoints and resume, seeding, the progress bar
and cost accounting. A method is a small class with one hook:

- :class:`LossMethod` — ``loss(model, forget, retain, ctx) -> scalar``; the engine back-propagates it
  and takes an AdamW step (OpenUnlearning's recipe: linear warm-up over the first 10 % of the steps,
  then linear decay to 0, weight decay 0.01 on matrices, gradient clipping at 1.0);
- :class:`UpdateMethod` — ``update(model, forget, retain, ctx) -> dict``; the method changes the
  weights itself (R2F) and returns what it wants logged.

Checkpoints are safetensors files plus JSON (never pickle): the model weights, the optimizer's
tensors, the RNG states, the step, the log and the cost so far. Batches are a pure function of
``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from r2f.data.schema import QAItem
from r2f.data.templates import PromptTemplate, encode_qa, template_for
from r2f import distributed as dist
from r2f.errors import R2FInputError, R2FNumericalError
from r2f.io import atomic_dir, write_json_atomic
from r2f.methods.cost import CostMeter
from r2f.methods.losses import sequence_nll
from r2f.progress import progress

CHECKPOINT_FORMAT = 1

# --------------------------------------------------------------------------------------------- data


class QABatch:
    """A batch of QA items, tokenised lazily.

    ``inputs`` is the original question with its answer (view 0); ``views(k)`` gives ``k`` batches, the
    v-th holding each item's v-th question view (original, then paraphrases; items with fewer views
    cycle through theirs), always paired with the item's answer.
    """

    def __init__(self, items: Sequence[QAItem], indices: Sequence[int], tokenizer, template: PromptTemplate,
                 max_length: int | None, device: torch.device):
        self.items = list(items)
        self.indices = list(indices)
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.device = device
        self._views: dict[int, list[dict]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def encode(self, questions: Sequence[str], answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        answers = [it.answer for it in self.items] if answers is None else answers
        enc = encode_qa(self.tokenizer, questions, answers, self.template, max_length=self.max_length)
        return {k: v.to(self.device) for k, v in enc.items()}

    @cached_property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self.encode([it.question for it in self.items])

    def views(self, k: int) -> list[dict[str, torch.Tensor]]:
        if k not in self._views:
            per_item = [it.views(k) for it in self.items]
            self._views[k] = [self.inputs if v == 0 else self.encode([vs[v % len(vs)] for vs in per_item])
                              for v in range(k)]
        return self._views[k]


def batch_indices(n: int, batch_size: int, seed: int, stream: int, step: int) -> list[int]:
    """Indices of the ``step``-th batch of a stream: epochs of seeded permutations, a pure function of its args."""
    bs = min(batch_size, n)
    per_epoch = math.ceil(n / bs)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + epoch) % (2**63))
    perm = torch.randperm(n, generator=g).tolist()
    chunk = perm[pos * bs:(pos + 1) * bs]
    if len(chunk) < bs:  # last, short batch of an epoch: fill from the start of the permutation
        chunk += perm[: bs - len(chunk)]
    return chunk


# ------------------------------------------------------------------------------------------ methods


@dataclass
class StepContext:
    """What a method's hook may read about the current step (and where it records signals)."""

    step: int                 # 0-based index of this step
    total_steps: int
    lr: float                 # learning rate (loss methods) or base step size (update methods) of this step
    seed: int
    engine: "Engine"
    signals: dict[str, float] = field(default_factory=dict)

    def record(self, **values: Any) -> None:
        for k, v in values.items():
            # per-item tensors: mean over the global batch (every rank's slice) in a data-parallel step
            self.signals[k] = dist.global_mean(v) if torch.is_tensor(v) and dist.in_data_parallel() \
                else (float(v.detach().float().mean()) if torch.is_tensor(v) else float(v))


class Method:
    """Base of every unlearning method. Subclass :class:`LossMethod` or :class:`UpdateMethod`."""

    name: ClassVar[str] = ""
    #: Method options and their defaults; ``unlearn(**options)`` may override any of them.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Default learning rate (loss methods) or base relative step size (update methods).
    default_lr: ClassVar[float] = 1e-4
    #: Whether the method needs retain data (an error is raised when it is missing).
    needs_retain: ClassVar[bool] = False
    #: Whether the method runs on an FSDP-sharded target (``--fsdp``); False: refused with exit 2 (e.g. a method
    #: that deep-copies the model, which FSDP forbids).
    supports_fsdp: ClassVar[bool] = True

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise R2FInputError(f"unknown option(s) {', '.join(unknown)} for method '{self.name}'; "
                                f"known: {', '.join(sorted(self.defaults)) or 'none'}", source="--method")
        self.options = {**self.defaults, **{k: v for k, v in options.items() if v is not None}}

    def __getattr__(self, key: str) -> Any:
        options = self.__dict__.get("options", {})
        if key in options:
            return options[key]
        raise AttributeError(key)

    @property
    def views(self) -> int:
        return int(self.options.get("views", 1))

    def setup(self, engine: "Engine") -> torch.nn.Module:
        """Prepare (reference values, adapters …) before the first step; return the model to train."""
        return engine.model

    def parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Method state to checkpoint beyond model and optimizer: (tensors, JSON-able values)."""
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        pass

    def should_stop(self, ctx: StepContext, log: list[dict]) -> str | None:
        """A reason string to stop before the budget, or None."""
        return None

    def describe(self) -> dict[str, Any]:
        """Resolved settings worth recording in the manifest (after ``setup``)."""
        return {}

    def finalize(self, model: torch.nn.Module) -> torch.nn.Module:
        """Turn the trained model into the plain model to save (e.g. merge an adapter)."""
        return model


class LossMethod(Method):
    def loss(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError


class UpdateMethod(Method):
    def update(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options: Any) -> Method:
    if name not in METHODS:
        raise R2FInputError(f"unknown method '{name}' (choose from {', '.join(sorted(METHODS))})", source="--method")
    return METHODS[name](**options)


# ------------------------------------------------------------------------------------------- engine


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
    def __init__(self, model: torch.nn.Module, tokenizer, forget: Sequence[QAItem], retain: Sequence[QAItem] | None,
                 method: Method, config: EngineConfig, *, device: torch.device | str | None = None,
                 template: PromptTemplate | None = None):
        if not forget:
            raise R2FInputError("no forget items", source="--forget")
        if method.needs_retain and not retain:
            raise R2FInputError(f"method '{method.name}' needs retain data", source="--retain")
        if config.steps < 1:
            raise R2FInputError("must be at least 1", source="--steps")
        for what, n in (("forget", len(forget)), ("retain", len(retain or []))):
            if n and min(config.batch_size, n) < dist.world_size():
                raise R2FInputError(f"a {what} batch of {min(config.batch_size, n)} item(s) cannot be split over "
                                    f"{dist.world_size()} processes; raise --batch-size or use fewer processes",
                                    source="--batch-size")
        self.model = model
        self.tokenizer = tokenizer
        self.forget = list(forget)
        self.retain = list(retain) if retain else []
        self.method = method
        self.config = config
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.template = template or template_for(tokenizer)
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: list[torch.nn.Parameter] = []
        self.step_scale = 1.0              # halved after every numerically failed (rolled-back) step
        self.failures: list[dict] = []     # one entry per failed step attempt
        self._retry = False
        self._ckpt_root: Path | None = None
        self.sharded = False               # the model is FSDP-sharded (config.fsdp under a multi-process run)

    # -- data -------------------------------------------------------------------------------------
    def make_batch(self, items: Sequence[QAItem], indices: Sequence[int] | None = None) -> QABatch:
        return QABatch(items, indices or [], self.tokenizer, self.template, self.config.max_length, self.device)

    def forget_batch(self, step: int) -> QABatch:
        idx = dist.shard_slice(batch_indices(len(self.forget), self.config.batch_size, self.config.seed, 0, step))
        return self.make_batch([self.forget[i] for i in idx], idx)  # this rank's slice of the global batch

    def retain_batch(self, step: int) -> QABatch | None:
        if not self.retain:
            return None
        idx = dist.shard_slice(batch_indices(len(self.retain), self.config.batch_size, self.config.seed, 1, step))
        return self.make_batch([self.retain[i] for i in idx], idx)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.forget) / min(self.config.batch_size, len(self.forget)))

    @torch.no_grad()
    def mean_nll(self, model, items: Sequence[QAItem], chunk: int | None = None) -> float:
        """Mean over items of the per-item mean answer-token NLL (the logged signal)."""
        chunk = chunk or max(1, self.config.batch_size)
        was_training = model.training
        model.eval()
        vals = []
        for i in range(0, len(items), chunk):
            b = self.make_batch(items[i:i + chunk])
            s, n = sequence_nll(model, b.inputs)
            vals.append(s / n.clamp_min(1))
        model.train(was_training)
        return float(torch.cat(vals).mean())

    def _summary_retain(self) -> list[QAItem]:
        if not self.retain:
            return []
        k = min(self.config.summary_items, len(self.retain))
        g = torch.Generator().manual_seed(self.config.seed + 12_345)
        return [self.retain[i] for i in torch.randperm(len(self.retain), generator=g)[:k].tolist()]

    # -- checkpoints ------------------------------------------------------------------------------
    @staticmethod
    def latest_checkpoint(ckpt_root: Path) -> Path | None:
        if not ckpt_root.is_dir():
            return None
        done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and (p / "state.json").is_file())
        return done[-1] if done else None

    def _save_checkpoint(self, ckpt_root: Path, step: int, state: dict) -> Path:
        final = ckpt_root / f"step-{step:08d}"
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        np_state = np.random.get_state()
        tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
        meta: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "rng": {"python": _py_rng_to_json(random.getstate()),
                    "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]},
            **state,
        }
        # FSDP: every rank calls this (the gathers are collectives, in the same order everywhere); rank 0 alone
        # keeps the full tensors and writes, so a checkpoint has the one-process format and resumes either way
        from r2f.fsdp import full_state_dict, full_tensor

        keep = dist.is_main()
        if self.optimizer is not None:
            sd = self.optimizer.state_dict()
            for pid, pstate in sd["state"].items():
                for k, v in pstate.items():
                    if not torch.is_tensor(v):
                        raise TypeError(f"non-tensor optimizer state {k}")
                    full = full_tensor(v, keep=keep)
                    if full is not None:
                        tensors[f"optim.{pid}.{k}"] = full.contiguous()
            meta["optimizer"] = {"param_groups": sd["param_groups"]}
        m_tensors, m_meta = self.method.state()
        for k, v in m_tensors.items():
            full = full_tensor(v, keep=keep)
            if full is not None:
                tensors[f"method.{k}"] = full.contiguous()
        meta["method_state"] = m_meta
        model_sd = full_state_dict(self.model) if self.sharded else None
        if not keep:
            return final
        with atomic_dir(final, overwrite=True) as tmp:
            if model_sd is not None:
                _save_state_dict(model_sd, tmp / "model.safetensors")
            else:
                save_model(self.model, str(tmp / "model.safetensors"))
            save_file(tensors, str(tmp / "state.safetensors"))
            write_json_atomic(tmp / "state.json", meta)
        old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and p != final)
        for p in old[: max(0, len(old) - (self.config.keep_checkpoints - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return final

    def _load_checkpoint(self, path: Path, run_key: dict) -> dict:
        import json

        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise R2FInputError(f"unsupported checkpoint format {meta.get('format')}", source=str(path))
        if meta.get("run_key") != _jsonable(run_key):
            diff = _first_difference(meta.get("run_key") or {}, _jsonable(run_key))
            raise R2FInputError(f"--resume: the run in this directory used another configuration ({diff})",
                                source=str(path.parent.parent))
        if self.sharded:  # every rank reads the full checkpoint and keeps its rows
            from r2f.fsdp import load_full_state_dict

            weights = load_file(str(path / "model.safetensors"))
            missing, unexpected = load_full_state_dict(self.model, weights), \
                sorted(set(weights) - set(self.model.state_dict()))
        else:
            missing, unexpected = load_model(self.model, str(path / "model.safetensors"), strict=False,
                                             device=str(self.device))
        if missing or unexpected:
            raise R2FInputError(f"checkpoint does not match the model (missing {list(missing)[:3]}, "
                                f"unexpected {list(unexpected)[:3]})", source=str(path))
        tensors = load_file(str(path / "state.safetensors"))
        if self.optimizer is not None:
            from r2f.fsdp import shard_state_tensor

            # optimizer state ids number the parameters in group order; a sharded parameter's state is sharded too
            flat = [p for g in self.optimizer.param_groups for p in g["params"]]
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, pid, name = k.split(".", 2)
                    state.setdefault(int(pid), {})[name] = shard_state_tensor(v, flat[int(pid)]) \
                        if int(pid) < len(flat) else v
            self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        self.method.load_state(self._method_tensors(tensors), meta.get("method_state", {}))
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        random.setstate(_py_rng_from_json(meta["rng"]["python"]))
        name, pos, has_gauss, cached = meta["rng"]["numpy"]
        np.random.set_state((name, tensors["rng.numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
        return meta

    def _method_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The method's checkpointed tensors; under FSDP, one named ``<prefix>.<parameter name>`` with that
        parameter's shape (R2F's Adam moments ``m.…``/``v.…``) is laid out like the parameter (this rank's rows)."""
        out = {k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")}
        if not self.sharded:
            return out
        from r2f.fsdp import shard_state_tensor

        params = dict(self.model.named_parameters())
        for k, v in out.items():
            p = params.get(k.split(".", 1)[1]) if "." in k else None
            if p is not None:
                out[k] = shard_state_tensor(v, p)
        return out

    # -- the loop ---------------------------------------------------------------------------------
    def _build_optimizer(self) -> None:
        self.params = self.method.parameters(self.model)
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.config.lr,
                                           betas=(0.9, 0.999), eps=1e-8)

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
            if cfg.fsdp and dist.is_distributed():
                # before the method's setup, so that its forward passes (reference NLLs, Σ statistics) and a
                # LoRA adapter see the sharded target; fully_shard moves each rank's rows to self.device
                from r2f.fsdp import shard_model

                self.model = shard_model(self.model, device=self.device)
                self.sharded = True
            self.model = self.method.setup(self) or self.model
            if isinstance(self.method, LossMethod):
                self._build_optimizer()
        start, log, stop_reason, resumed_from, summary, prior_cost = 0, [], None, None, {}, None
        ckpt = self.latest_checkpoint(ckpt_root) if (ckpt_root is not None and resume) else None
        if ckpt is not None:
            with meter.stage("resume"):
                meta = self._load_checkpoint(ckpt, run_key)
            start, log, stop_reason = meta["step"], meta["log"], meta.get("stop_reason")
            summary = meta.get("summary", {})
            resumed_from = start
            prior_cost = meta.get("cost")
            numerics = meta.get("numerics") or {}
            self.step_scale = float(numerics.get("step_scale", 1.0))
            self.failures = list(numerics.get("failures", []))
        else:
            with meter.stage("measure"):
                summary["forget_nll_start"] = self.mean_nll(self.model, self.forget)
                if self.retain:
                    summary["retain_nll_start"] = self.mean_nll(self.model, self._summary_retain())

        def state() -> dict:
            return {"run_key": _jsonable(run_key), "log": log, "stop_reason": stop_reason, "summary": summary,
                    "cost": meter.summary(), "numerics": self.numerics()}

        self.summary = summary
        bar = progress(total=cfg.steps, desc=desc or f"unlearn[{self.method.name}]", initial=start)
        self.model.train()
        step = start
        with meter.stage("unlearn"):
            self._ckpt_root = ckpt_root
            for step in self._step_indices(start, cfg.steps):  # a rolled-back step is attempted again
                if stop_reason is not None:
                    break
                t0 = time.perf_counter()
                factor = linear_schedule(step, cfg.steps, cfg.warmup_ratio) if self.optimizer is not None else 1.0
                ctx = StepContext(step=step, total_steps=cfg.steps, lr=cfg.lr * factor * self.step_scale,
                                  seed=cfg.seed, engine=self)
                snap = self._snapshot()
                forget, retain = self.forget_batch(step), self.retain_batch(step)
                entry: dict[str, Any] = {"step": step + 1}
                if isinstance(self.method, LossMethod):
                    for g in self.optimizer.param_groups:
                        g["lr"] = ctx.lr
                    with dist.data_parallel():  # losses divide by global counts; gradients summed over ranks
                        loss = self.method.loss(self.model, forget, retain, ctx)
                        self._fill_signals(ctx, forget, retain)
                    loss.backward()
                    if dist.is_distributed():  # FSDP's backward already summed its sharded gradients (r2f.fsdp)
                        from r2f.fsdp import is_sharded

                        dist.all_reduce_sum_([p.grad for p in self.params if p.grad is not None
                                              and not is_sharded(p.grad)])
                        loss = dist.global_sum(loss.detach())
                    gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm) \
                        if cfg.max_grad_norm else None
                    if self._failed(step, snap, loss=loss, grads=True):
                        continue
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self._failed(step, snap, weights=True):
                        continue
                    entry.update(loss=float(loss.detach()), lr=ctx.lr)
                    if gnorm is not None:
                        entry["grad_norm"] = float(gnorm)
                else:
                    with dist.data_parallel():  # the method all-reduces its (probe) gradients
                        self._fill_signals(ctx, forget, retain)
                        extra = self.method.update(self.model, forget, retain, ctx) or {}
                    if self._failed(step, snap, reason=extra.pop("numerical_fault", None), weights=True):
                        continue
                    entry.update({k: (float(v) if torch.is_tensor(v) else v) for k, v in extra.items()})
                entry.update({k: v for k, v in ctx.signals.items() if k not in entry})
                if self.step_scale != 1.0:
                    entry["step_scale"] = self.step_scale
                    entry["retries"] = sum(1 for f in self.failures if f["step"] == step + 1)
                entry["wall_s"] = round(time.perf_counter() - t0, 4)
                log.append(_order(entry))
                stop_reason = self.method.should_stop(ctx, log)
                bar.set_postfix(refresh=False, **{k.split("_")[0]: f"{v:.3f}" for k, v in ctx.signals.items()
                                                  if k in ("forget_nll", "retain_nll")})
                bar.update(1)
                done = step + 1
                if ckpt_root is not None and cfg.save_every > 0 and (
                        done % cfg.save_every == 0 or done == cfg.steps or stop_reason is not None):
                    with meter.stage("checkpoint"):
                        if dist.is_main() or self.sharded:  # every rank holds the same weights and state
                            self._save_checkpoint(ckpt_root, done, state())  # (FSDP: gathered to rank 0)
                        dist.barrier()
        bar.close()
        steps_done = len(log)
        with meter.stage("finalize"):
            self.model.eval()
            if self.sharded:  # a LoRA adapter merges into each rank's rows (PEFT's merge needs whole weights)
                from r2f.fsdp import merge_lora_shards

                merge_lora_shards(self.model)
            model = self.method.finalize(self.model)
            summary["forget_nll_end"] = self.mean_nll(model, self.forget)
            if self.retain:
                summary["retain_nll_end"] = self.mean_nll(model, self._summary_retain())
        return RunResult(model=model, log=log, steps_done=steps_done, stop_reason=stop_reason, summary=summary,
                         cost=meter.summary(), resumed_from=resumed_from, method_info=self.method.describe(),
                         prior_cost=prior_cost, numerics=self.numerics())

    # -- numerical faults -------------------------------------------------------------------------
    def numerics(self) -> dict[str, Any]:
        return {"max_failures": self.config.max_failures, "step_scale": self.step_scale,
                "failures": list(self.failures)}

    def _step_indices(self, start: int, stop: int):
        step = start
        while step < stop:
            self._retry = False
            yield step
            if not self._retry:
                step += 1

    def _watched(self) -> list[torch.nn.Parameter]:
        return self.params or list(self.model.parameters())

    def _snapshot(self) -> tuple:
        """What a step may change: the weights, the optimizer's state and the method's state (cloned)."""
        weights = [p.detach().clone() for p in self._watched()]
        opt = None
        if self.optimizer is not None:
            sd = self.optimizer.state_dict()
            opt = {"state": {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                             for i, st in sd["state"].items()},
                   "param_groups": [dict(g) for g in sd["param_groups"]]}
        m_tensors, m_meta = self.method.state()
        return weights, opt, ({k: v.detach().clone() for k, v in m_tensors.items()}, _jsonable(m_meta))

    def _failed(self, step: int, snap: tuple, *, loss: torch.Tensor | None = None, grads: bool = False,
                weights: bool = False, reason: str | None = None) -> bool:
        """Detect a NaN/Inf; if any, roll the step back, halve the step size and ask for a retry.

        Raises :class:`R2FNumericalError` at the ``max_failures``-th failure (weights left at the last good step).
        """
        # FSDP: a shard's check alone could differ between ranks (one rolls back, the other goes on: a hang);
        # all_finite agrees over every rank
        from r2f.fsdp import all_finite

        why = reason
        if why is None and loss is not None and not math.isfinite(float(loss.detach())):
            why = f"loss is {float(loss.detach())}"
        if why is None and grads:
            bad = next((i for i, p in enumerate(self.params)
                        if p.grad is not None and not all_finite(p.grad)), None)
            if bad is not None:
                why = "gradient is not finite"
        if why is None and weights:
            bad = next((n for n, p in self.model.named_parameters() if not all_finite(p)), None)
            if bad is not None:
                why = f"weight {bad} is not finite after the step"
        if why is None:
            return False
        w, opt, (m_tensors, m_meta) = snap
        with torch.no_grad():
            for p, saved in zip(self._watched(), w):
                p.copy_(saved)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.load_state_dict(opt)
        if m_tensors or m_meta:
            self.method.load_state(m_tensors, m_meta)
        self.step_scale *= 0.5
        self.failures.append({"step": step + 1, "reason": why, "step_scale": self.step_scale})
        if len(self.failures) >= self.config.max_failures:
            last = self.latest_checkpoint(self._ckpt_root) if self._ckpt_root is not None else None
            where = f"last good checkpoint: {last}" if last is not None else "no checkpoint (see --save-every)"
            raise R2FNumericalError(f"step {step + 1}: {why}; rolled back; {len(self.failures)} numerical failures "
                                    f"reached --max-failures {self.config.max_failures}; {where}")
        self._retry = True
        return True

    def _fill_signals(self, ctx: StepContext, forget: QABatch, retain: QABatch | None) -> None:
        """Forget/retain mean answer NLL on this step's batches, at the weights the step starts from."""
        need = [("forget_nll", forget)] + ([("retain_nll", retain)] if retain is not None else [])
        with torch.no_grad():
            for key, batch in need:
                if key not in ctx.signals:
                    s, n = sequence_nll(self.model, batch.inputs)
                    ctx.record(**{key: s / n.clamp_min(1)})


# ------------------------------------------------------------------------------------------ helpers


def _save_state_dict(sd: dict[str, torch.Tensor], path: Path) -> None:
    """A gathered state dict written as ``save_model`` writes the model (a tied weight once, under the name
    ``save_model`` keeps, with the same metadata), so one-process and FSDP checkpoints resume each other."""
    from safetensors.torch import _remove_duplicate_names

    metadata: dict[str, str] = {}
    sd = dict(sd)
    for kept, removed in _remove_duplicate_names(sd).items():
        for name in removed:
            metadata[name] = kept
            del sd[name]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata or None)


def _order(entry: dict) -> dict:
    first = ["step", "forget_nll", "retain_nll", "loss", "lr", "step_size"]
    return {**{k: entry[k] for k in first if k in entry}, **{k: v for k, v in entry.items() if k not in first}}


def _py_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng_from_json(obj: list) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def _first_difference(a: dict, b: dict) -> str:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {a.get(k)!r} then, {b.get(k)!r} now"
    return "unknown difference"


__all__ = ["Engine", "EngineConfig", "Method", "LossMethod", "UpdateMethod", "StepContext", "QABatch", "RunResult",
           "METHODS", "register", "get_method", "batch_indices", "linear_schedule", "seed_everything"]
