"""Data-parallel runs under ``torchrun`` / ``accelerate launch``: the one place r2f talks to torch.distributed.

Design (ours):

* :func:`init_from_env` starts the default process group when the launcher set ``WORLD_SIZE > 1``
  (``gloo`` for CPU tensors, plus ``nccl`` for CUDA tensors when CUDA is available; override with
  ``R2F_DIST_BACKEND``) and says whether it did; the CLI calls it before a command and hands that answer to
  :func:`teardown` after it (no module-level record of who owns the group). Library
  users who start their own process group get the same behaviour (everything here reads
  ``torch.distributed``'s state, not the environment).
* Data parallelism keeps **the global batch of a step identical to the one-process batch**: every rank
  takes a contiguous slice of the same global batch (:func:`shard_bounds`). What computes on such slices
  is handed a :class:`DataParallel` value (the unlearning engine passes its own to every step, the
  evaluation suite to its scoring passes; nothing reads a module-level switch): loss functions divide by
  its *global* counts (:meth:`DataParallel.count`), so the per-rank gradients (LoRA probe sketches,
  which are linear in G, or full gradients) sum to the gradient of the global batch;
  :func:`all_reduce_sum_` sums them. The result equals one process up to float summation order.
  :data:`ONE_PROCESS` (the default of every such argument) computes on the whole batch.
* Evaluation and pair generation shard whole work units (batches, jobs) round-robin with
  :meth:`DataParallel.share` and put the results back in order with :meth:`DataParallel.gather`, so
  every per-item number is computed on exactly the batch one process would use (bit-identical per item).
* Only the main rank (:func:`is_main`) writes files and shows progress bars.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def available() -> bool:
    return torch.distributed.is_available()


def is_initialized() -> bool:
    return available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True when more than one process takes part (a process group of size > 1 is running)."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def default_backend() -> str:
    env = os.environ.get("R2F_DIST_BACKEND")
    if env:
        return env
    if torch.cuda.is_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env(timeout_s: float | None = None) -> bool:
    """Start the default process group when launched with ``WORLD_SIZE > 1``. True when this call started it:
    the caller then owns it and ends it with ``teardown(started=True)``; False when one was already running (its
    owner ends it) or none is needed."""
    if is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not available():
        return False
    timeout = timedelta(seconds=float(timeout_s or os.environ.get("R2F_DIST_TIMEOUT", "3600")))
    backend = default_backend()
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % max(1, torch.cuda.device_count()))
    torch.distributed.init_process_group(backend=backend, timeout=timeout)
    return True


def teardown(started: bool) -> None:
    """Destroy the process group when ``started`` (what :func:`init_from_env` returned: the caller owns it)."""
    if started and is_initialized():
        try:
            torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def resolve_device(device: str | torch.device | None) -> str | torch.device | None:
    """Under a multi-process run, a bare ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``)."""
    if device is not None and str(device) == "cuda" and is_distributed():
        return f"cuda:{local_rank() % max(1, torch.cuda.device_count())}"
    return device


def describe() -> dict[str, Any]:
    """What the manifest and logs record about the processes that ran."""
    if not is_distributed():
        return {"world_size": 1}
    return {"world_size": world_size(), "backend": str(torch.distributed.get_backend())}


# ------------------------------------------------------------------------------- the data-parallel context


@dataclass(frozen=True)
class DataParallel:
    """How the batches handed to a computation relate to the global batch: with ``world > 1`` each rank holds
    its slice (``rank`` of ``world``) and means divide by counts summed over the ranks; with ``world == 1``
    (:data:`ONE_PROCESS`) the batch is the whole batch. A plain value, passed as an argument: the engine
    builds one per run (:meth:`current`) and hands it to every step (``StepContext.dp``)."""

    world: int = 1
    rank: int = 0

    @classmethod
    def current(cls) -> "DataParallel":
        """This process's place in the running process group (one process when none runs)."""
        return cls(world=world_size(), rank=rank())

    @property
    def active(self) -> bool:
        """True when the batches are rank slices of a global batch (more than one process)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and reports (rank 0; the one process when not active)."""
        return self.rank == 0

    def count(self, local: torch.Tensor) -> torch.Tensor:
        """Denominator of a mean over the global batch: the local count summed over ranks when active, the local
        count otherwise (differentiable w.r.t. nothing)."""
        if not self.active:
            return local
        t = local.detach().to(torch.float64).reshape(1).clone()
        all_reduce_sum_(t)
        return t[0].to(local.dtype if local.dtype.is_floating_point else torch.float32).to(local.device)

    def mean(self, values: torch.Tensor) -> float:
        """Mean of per-item values over the global batch (every rank's items when active)."""
        return global_mean(values) if self.active else float(values.detach().float().mean())

    def slice(self, seq: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of a global batch (the whole sequence in one process)."""
        return shard_slice(seq, self.rank, self.world) if self.active else list(seq)

    def share(self, units: Sequence[T]) -> list[T]:
        """This rank's round-robin share of whole work units (all of them in one process); see :meth:`gather`."""
        return shard_list(units, self.rank, self.world) if self.active else list(units)

    def gather(self, local: list[T], n: int) -> list[T]:
        """Inverse of :meth:`share`: the ``n`` results of every rank's share, in order."""
        return gather_in_order(local, n) if self.active else list(local)


#: The whole batch in this process: the default wherever a :class:`DataParallel` is an argument.
ONE_PROCESS = DataParallel()


def all_reduce_sum_(tensors: Sequence[torch.Tensor] | torch.Tensor) -> None:
    """In-place sum over ranks (one flat collective for many tensors; no-op in one process)."""
    if not is_distributed():
        return
    ts = [tensors] if torch.is_tensor(tensors) else [t for t in tensors if t is not None]
    if not ts:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in ts:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        off = 0
        for t in group:
            n = t.numel()
            with torch.no_grad():
                t.copy_(flat[off:off + n].view_as(t))
            off += n


def global_sum(value: torch.Tensor | float) -> torch.Tensor | float:
    """The sum over ranks of a local value (a tensor is reduced as float64; gradients do not flow)."""
    if not is_distributed():
        return value
    if torch.is_tensor(value):
        t = value.detach().to(torch.float64).reshape(-1).clone()
        all_reduce_sum_(t)
        return t.reshape(value.shape).to(value.dtype) if value.dtype.is_floating_point else t.reshape(value.shape)
    t = torch.tensor([float(value)], dtype=torch.float64)
    all_reduce_sum_(t)
    return float(t[0])


def global_mean(values: torch.Tensor) -> float:
    """Mean of per-item values over the items of every rank (the local mean in one process)."""
    v = values.detach().double().reshape(-1)
    if not is_distributed():
        return float(v.mean())
    t = torch.stack([v.sum(), torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device)]).cpu()
    all_reduce_sum_(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


# ------------------------------------------------------------------------------------------- sharding


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[start, stop) of a rank's contiguous slice of ``n`` items (sizes differ by at most one)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return (r * n) // w, ((r + 1) * n) // w


def shard_slice(seq: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    lo, hi = shard_bounds(len(seq), rank_, world)
    return list(seq[lo:hi])


def shard_list(seq: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """Round-robin share of work units (``seq[rank::world]``); see :func:`gather_in_order`."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(seq[r::w])


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable; our own results only, never untrusted data), by rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_in_order(local: list[T], n: int) -> list[T]:
    """Inverse of :func:`shard_list`: the ``n`` results of every rank's round-robin share, in order."""
    if not is_distributed():
        return list(local)
    parts = all_gather_objects(list(local))
    w = len(parts)
    out: list[Any] = [None] * n
    for r, part in enumerate(parts):
        for j, v in enumerate(part):
            out[r + j * w] = v
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


__all__ = [
    "DataParallel",
    "ONE_PROCESS",
    "all_gather_objects",
    "all_reduce_sum_",
    "available",
    "barrier",
    "broadcast_object",
    "describe",
    "gather_in_order",
    "global_mean",
    "global_sum",
    "init_from_env",
    "is_distributed",
    "is_initialized",
    "is_main",
    "local_rank",
    "rank",
    "resolve_device",
    "shard_bounds",
    "shard_list",
    "shard_slice",
    "teardown",
    "world_size",
]
