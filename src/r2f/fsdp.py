"""R2F on targets sharded with PyTorch FSDP (FSDP2, ``torch.distributed.fsdp.fully_shard``).

A target too big for one device is wrapped with :func:`shard_model`: every decoder layer (and the root)
becomes an FSDP unit whose parameters are DTensors sharded along dim 0 (rows) over the ranks. What
R2F needs from such a model:

* **probe sketches**: the probe reads the weight FSDP all-gathers for the layer's forward; the factors
  are drawn from the weight's *global* shape (a DTensor reports it), so they are the unsharded ones.
  Sketches are small (m×r_A, r_B×n) and every rank holds them whole; summed over ranks they sketch
  the global batch's gradient (``reduce=True``), exactly as in plain data parallelism.
* **the decoded update** (:func:`apply_decoded_update`): each rank applies, to the rows it owns, the
  same rows of the decoded direction; the relative step size needs ‖W‖_F, summed over the shards
  (one all-reduce per step for all modules). With the direction ``D`` and step ``η`` the result is the
  unsharded rule ``W ← W − η·‖W‖_F·D/‖D‖_F`` (``step_norm="module"``) or its global-norm variant,
  up to float reduction order.

Design decision (ours): every rank decodes the whole direction of a module from the (replicated)
sketches and keeps its rows — decoding is cheap next to the forward/backward passes and streams one
module at a time, so peak memory stays near one layer's full gradient. Splitting the decode itself by
rows is left for later (the closed-form decoders factor by rows; the learned one's coefficients are
per module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from r2f import distributed as dist


def is_sharded(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def shard_model(model: nn.Module, *, reshard_after_forward: bool = True, layer_types: tuple[type, ...] | None = None):
    """Wrap ``model`` with FSDP2: each decoder layer (``model.model.layers[i]`` or ``layer_types``), then the root."""
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise RuntimeError("FSDP needs a process group (run under torchrun, see docs/distributed.md)")
    if layer_types is not None:
        layers = [m for m in model.modules() if isinstance(m, layer_types)]
    else:
        inner = getattr(model, "model", model)
        layers = list(getattr(inner, "layers", []))
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(this rank's local tensor, the rows of the global tensor it holds) of a parameter.

    A plain tensor is its own, whole shard. A DTensor must be replicated or sharded along dim 0 (FSDP's
    layout)."""
    if not is_sharded(param):
        return param.data, slice(0, param.shape[0])
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for p in param.placements:
        if not isinstance(p, (Replicate, Shard)) or (isinstance(p, Shard) and p.dim != 0):
            raise ValueError(f"unsupported placement {p} (FSDP shards along dim 0)")
    local = param.to_local()
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    start = int(offset[0]) if len(offset) else 0
    return local, slice(start, start + int(shape[0]))


def _sq_norm_local(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().pow(2).sum()


def param_sq_norms(params: Mapping[str, torch.Tensor], names) -> dict[str, float]:
    """‖W‖_F² of each named parameter, summed over its shards (one all-reduce for all)."""
    names = list(names)
    vals = []
    sharded = []
    for n in names:
        local, _ = local_rows(params[n])
        vals.append(_sq_norm_local(local).cpu())
        sharded.append(is_sharded(params[n]))
    if not names:
        return {}
    t = torch.stack(vals)
    mask = torch.tensor(sharded, dtype=torch.bool)
    if mask.any() and dist.is_distributed():
        part = torch.where(mask, t, torch.zeros_like(t))
        dist.all_reduce_sum_(part)
        t = torch.where(mask, part, t)
    return {n: float(v) for n, v in zip(names, t)}


@torch.no_grad()
def apply_decoded_update(model: nn.Module, directions: Mapping[str, torch.Tensor], eta: float,
                         step_norm: str = "module") -> dict[str, float]:
    """``W ← W − η·‖W‖·D/‖D‖`` for every named direction, on plain or FSDP-sharded weights.

    ``directions`` holds the full (unsharded) direction of each weight, the same on every rank (decoded
    from all-reduced sketches); each rank changes only the rows it owns. ``step_norm="module"``: per
    weight matrix; ``"global"``: one scale for all (‖W‖ and ‖D‖ over every named weight). Returns the
    applied scale per name (what multiplies D). Same result as the unsharded rule of ``r2f.methods.r2f``.
    """
    params = dict(model.named_parameters())
    missing = [n for n in directions if n not in params]
    if missing:
        raise KeyError(f"decoded gradient for unknown parameter {missing[0]}")
    w2 = param_sq_norms(params, directions)
    d2 = {n: float(d.detach().double().pow(2).sum()) for n, d in directions.items()}
    if step_norm == "global":
        wn, dn = math.sqrt(sum(w2.values())), math.sqrt(sum(d2.values()))
        scale = {n: (eta * wn / dn if dn > 0 else 0.0) for n in directions}
    elif step_norm == "module":
        scale = {n: (eta * math.sqrt(w2[n]) / math.sqrt(d2[n]) if d2[n] > 0 else 0.0) for n in directions}
    else:
        raise ValueError(f"unknown step_norm {step_norm!r} (module|global)")
    for n, d in directions.items():
        if not scale[n] or not math.isfinite(scale[n]):
            continue
        local, rows = local_rows(params[n])
        if local.numel() == 0:
            continue
        part = d.detach()[rows].to(device=local.device, dtype=torch.float32)
        local.sub_((scale[n] * part).to(local.dtype))
    return scale


__all__ = ["apply_decoded_update", "is_sharded", "local_rows", "param_sq_norms", "shard_model"]
