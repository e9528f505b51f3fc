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

# torch.distributed's FSDP and DTensor modules are imported inside the functions that use them: a torch built
# without distributed support has none of them (is_sharded then says no), and importing them costs about 0.4 s
# that a one-process run, which imports this module too (r2f.methods.api), does not need.


def is_sharded(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor  # deferred: see under the imports
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP wraps one by one: ``model.model.layers`` (Llama-shaped), else the first
    ``nn.ModuleList`` of the model (GPT-2 ``transformer.h``, GPT-NeoX ``gpt_neox.layers``, OPT, …)."""
    inner = getattr(model, "model", None)
    if inner is not None and isinstance(getattr(inner, "layers", None), nn.ModuleList):
        return list(inner.layers)
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return list(mod)
    return []


def shard_model(model: nn.Module, *, reshard_after_forward: bool = True, layer_types: tuple[type, ...] | None = None,
                device: str | torch.device | None = None):
    """Wrap ``model`` with FSDP2: each decoder layer (:func:`decoder_layers` or ``layer_types``), then the root.

    ``device``: where the shards live (the mesh's device type; default: CUDA when available, else CPU);
    ``fully_shard`` moves each rank's rows there, so a model loaded on CPU never has to fit on one GPU whole.
    Gradient reduction **sums** over ranks (divide factor 1): r2f's losses given an active
    :class:`r2f.distributed.DataParallel` divide by global counts, so each rank's gradient is its share of
    the global mean and the sum is the global gradient, as in the data-parallel path. (Plain SUM
    reductions: gloo has no PREMUL_SUM.)
    """
    from torch.distributed.device_mesh import init_device_mesh  # deferred: see under the imports
    from torch.distributed.fsdp import FSDPModule, fully_shard  # deferred: see under the imports

    if not dist.is_initialized():
        raise RuntimeError("FSDP needs a process group (run under torchrun, see docs/distributed.md)")
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    mesh = init_device_mesh(kind, (dist.world_size(),))
    if layer_types is not None:
        layers = [m for m in model.modules() if isinstance(m, layer_types)]
    else:
        layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for mod in model.modules():
        if isinstance(mod, FSDPModule):
            mod.set_gradient_divide_factor(1.0)
            mod.set_force_sum_reduction_for_comms(True)
    return model


def is_sharded_model(model: nn.Module) -> bool:
    return any(is_sharded(p) for p in model.parameters())


def _sharded_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (the same on every rank) as a DTensor laid out like the sharded ``like``: this rank's rows, no
    communication."""
    # deferred: see under the imports
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(full.shape, like.device_mesh, like.placements)
    start = int(offset[0]) if len(offset) else 0
    local = full.detach()[start:start + int(shape[0])].to(like.device).contiguous()
    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False, shape=full.shape,
                              stride=full.contiguous().stride())


def shard_like(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full per-parameter tensors (decoded directions, keyed by parameter name, the same on every rank) in the
    layout of their parameters: a sharded parameter's entry becomes a DTensor of this rank's rows, so that
    everything downstream (norms, inner products, Adam moments, ``W -= η·D``) runs on shards, and reductions
    over a whole module (``float(d.norm())``) sum over ranks by themselves. Plain parameters: unchanged."""
    params = dict(model.named_parameters())
    out = {}
    for n, t in tensors.items():
        p = params.get(n)
        out[n] = _sharded_like(t, p) if p is not None and is_sharded(p) and not is_sharded(t) else t
    return out


def input_side_matmul(t: torch.Tensor, m: torch.Tensor, *, transposed: bool = False) -> torch.Tensor:
    """A weight-shaped ``t`` times ``m`` on its input side: ``t @ m`` for an (out × in) weight, ``m @ t`` for a
    transposed (in × out) one (GPT-2's ``Conv1D``); ``m`` is symmetric and the same on every rank. For a DTensor of
    row shards of an (out × in) weight a shard times ``m`` is that shard of the product (no communication); a
    transposed sharded weight is gathered, multiplied and re-sharded."""
    if not is_sharded(t):
        return m @ t if transposed else t @ m
    if transposed:
        return _sharded_like(m @ t.full_tensor(), t)
    from torch.distributed.tensor import DTensor  # deferred: see under the imports

    local = t.to_local() @ m.to(t.to_local().dtype)
    return DTensor.from_local(local, t.device_mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride())


def scalar(t: torch.Tensor) -> float:
    """``float(t)`` of a reduction (``(d * r).sum()``, ``d.norm()``, ``v.max()``) over a whole module, also when
    ``t`` is a DTensor: a reduction of row shards is a *partial* DTensor, and ``float()`` of it reads this rank's
    partial value only; ``full_tensor()`` completes the reduction over ranks first."""
    return float(t.full_tensor()) if is_sharded(t) else float(t)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of a plain or sharded tensor is finite (over all shards, the same answer on every rank)."""
    if not is_sharded(t):
        return bool(torch.isfinite(t).all())
    bad = torch.tensor([float(not bool(torch.isfinite(t.to_local()).all()))], dtype=torch.float64)
    dist.all_reduce_sum_(bad)
    return not bool(bad[0] > 0)


def full_tensor(t: torch.Tensor, *, keep: bool = True) -> torch.Tensor | None:
    """A DTensor gathered whole, on CPU (a collective: every rank must call it, in the same order); a plain
    tensor as it is, on CPU. ``keep=False``: the rank does not keep the result (returns None) — the gather
    still runs; only rank 0 writes checkpoints."""
    full = t.detach().full_tensor() if is_sharded(t) else t.detach()
    return full.cpu() if keep else None


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict (CPU tensors) on rank 0, ``{}`` elsewhere: one tensor gathered at a time, so a
    rank holds at most one full tensor beyond its shards. Collective. A tied weight is one tensor under all its names."""
    keep = dist.is_main()
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) in seen:  # a tied weight stays one tensor: save_pretrained then writes it once, as unsharded
            if keep:
                out[k] = out[seen[id(v)]]
            continue
        seen[id(v)] = k
        full = full_tensor(v, keep=keep)
        if full is not None:
            out[k] = full
    return out


@torch.no_grad()
def load_full_state_dict(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy full tensors (a checkpoint's, read by every rank) into a plain or sharded model: each rank takes its
    rows. A tied tensor is found under any of its names. Returns the state-dict names not found."""
    names: dict[int, list[str]] = {}
    current = model.state_dict(keep_vars=True)
    for k, v in current.items():
        names.setdefault(id(v), []).append(k)
    missing = []
    for group in names.values():
        src = next((tensors[k] for k in group if k in tensors), None)
        if src is None:
            missing += group
            continue
        dst = current[group[0]]
        local, rows = local_rows(dst)
        local.copy_(src[rows].to(device=local.device, dtype=local.dtype))
    return missing


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(this rank's local tensor, the rows of the global tensor it holds) of a parameter.

    A plain tensor is its own, whole shard. A DTensor must be replicated or sharded along dim 0 (FSDP's
    layout)."""
    if not is_sharded(param):
        return param.data, slice(0, param.shape[0])
    # deferred: see under the imports
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


@torch.no_grad()
def merge_lora_shards(model: nn.Module) -> None:
    """Merge every active PEFT LoRA adapter of an FSDP-sharded target into the rows each rank owns, and mark it
    merged, so that a later ``merge_and_unload()`` only unloads: PEFT's own merge adds the full ``B·A`` to the
    weight in place, which a sharded weight refuses. The adapters themselves are small and replicated."""
    try:
        from peft.tuners.lora import LoraLayer  # deferred: peft (about 2 s) is only needed by LoRA runs
    except ImportError:  # pragma: no cover - peft is a dependency
        return
    for mod in model.modules():
        if not isinstance(mod, LoraLayer):
            continue
        weight = mod.get_base_layer().weight
        if not is_sharded(weight):
            continue
        for name in mod.active_adapters:
            if name in mod.merged_adapters or name not in mod.lora_A:
                continue
            local, rows = local_rows(weight)
            local.add_(mod.get_delta_weight(name)[rows].to(local.dtype))
            mod.merged_adapters.append(name)


def shard_state_tensor(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A loaded full tensor (optimizer or method state of a parameter) laid out like ``like`` (sharded or not)."""
    if is_sharded(like) and tuple(full.shape) == tuple(like.shape):
        return _sharded_like(full, like)  # its own dtype: R2F's Adam moments stay float32 next to bf16 weights
    return full


__all__ = ["all_finite", "apply_decoded_update", "decoder_layers", "full_state_dict", "full_tensor", "is_sharded",
           "is_sharded_model", "load_full_state_dict", "local_rows", "merge_lora_shards", "param_sq_norms", "scalar", "shard_like", "shard_model",
           "shard_state_tensor"]
