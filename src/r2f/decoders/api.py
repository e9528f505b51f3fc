"""What the unlearning engine calls: ``load_decoder`` (``resolve_decoder`` for user input) and ``decoded_gradients``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from r2f.decoders.base import BUILTIN, Decoder
from r2f.decoders.learned import LearnedDecoder
from r2f.errors import R2FInputError
from r2f.gradients.probe import (
    LossFn,
    ProbeConfig,
    exact_gradients,
    module_kind,
    probe_gradients,
    target_linears,
    to_weight_layout,
)
from r2f.io import write_json_atomic
from r2f.models.cache import cache_dir


def _default_pointer() -> Path:
    return cache_dir() / "decoders" / "default.json"


def set_default_decoder(path: str | os.PathLike) -> None:
    """Record ``path`` as the learned decoder that ``--decoder learned`` (R2F's default) resolves to."""
    pointer = _default_pointer()
    pointer.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(pointer, {"path": str(Path(path).resolve())})


def default_decoder_path() -> Path:
    """The learned decoder most recently written by ``r2f train-decoder`` (or ``r2f demo``) on this machine."""
    pointer = _default_pointer()
    try:
        path = Path(json.loads(pointer.read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        raise R2FInputError("no learned decoder yet: run r2f train-decoder (or r2f demo) first, "
                            "or pass --decoder FILE or a built-in name", source="--decoder") from None
    if not path.is_file():
        raise R2FInputError(f"the default learned decoder {path} no longer exists; pass --decoder FILE",
                            source="--decoder")
    return path


def load_decoder(name_or_path: str | os.PathLike | Decoder) -> Decoder:
    """A built-in decoder by name (lora, ls, sketch, sketch_row, sigma, exact), a learned decoder file, or
    ``learned``: the default learned decoder (the last one ``r2f train-decoder`` wrote on this machine)."""
    if isinstance(name_or_path, Decoder):
        return name_or_path
    key = str(name_or_path)
    if key in BUILTIN:
        return BUILTIN[key]()
    if key == "learned":
        key = str(default_decoder_path())
    path = Path(key)
    if not path.exists():
        raise R2FInputError(
            f"unknown decoder (not a file, nor one of {', '.join(sorted(BUILTIN))})", source=key
        )
    return LearnedDecoder.load(path)


#: The decoder a method that uses one gets when none is named: the last learned decoder of this machine.
DEFAULT_DECODER = "learned"


def resolve_decoder(name_or_path: str | os.PathLike | Decoder | None) -> Decoder:
    """:func:`load_decoder` for user input: None is :data:`DEFAULT_DECODER`, a ``Decoder`` object is used as it is
    (injected, e.g. a stand-in in tests); an unknown name or unreadable file is R2FInputError naming it."""
    spec = name_or_path or DEFAULT_DECODER
    try:
        return load_decoder(spec if isinstance(spec, Decoder) else str(spec))
    except R2FInputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise R2FInputError(f"cannot load decoder: {exc}", source=str(spec)) from None


def iter_decoded_gradients(
    model: nn.Module,
    view_batches: list[dict],
    decoder: Decoder | str,
    probe: ProbeConfig,
    loss_fn: LossFn | None = None,
    aggregate: str = "mean",
    stats=None,
    reduce: bool = False,
    checked: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (weight parameter name, decoded gradient) one module at a time, in the parameter's layout
    (decoders work on the m × n matrix W of y = W x; a ``Conv1D`` weight is Wᵀ, so its direction is transposed).

    ``reduce=True`` (data-parallel): the probe sketches are summed over ranks *before* decoding (they are
    linear in G, so this sketches the global batch's gradient; decoders are not linear). ``checked=True``: the
    caller has loaded ``decoder`` and checked it against this probe and model's module kinds
    (``Decoder.check_compatible``) once, as R2F does at setup, so no step repeats it."""
    decoder = load_decoder(decoder)
    if not checked:
        kinds = {module_kind(n) for n, _ in target_linears(model, probe.target_modules)}
        decoder.check_compatible(probe, kinds)
    if decoder.needs_exact:
        grads = exact_gradients(model, view_batches, loss_fn, pattern=probe.target_modules, aggregate=aggregate,
                                reduce=reduce)
        for name, g in grads.items():
            yield name, g
        return
    sketches = probe_gradients(model, view_batches, probe, loss_fn, aggregate=aggregate, batch_stats=decoder.access == "batch",
                                 reduce=reduce)
    modules = dict(target_linears(model, probe.target_modules))
    # a module whose output never reaches the loss (layers above RMU's steered layer) has G = 0 exactly: it
    # decodes to zeros (its batch statistic was never recorded, and a nonlinear decoder need not map 0 to 0)
    reached = []
    for sk in sketches:
        if sk.grad_a.any() or sk.grad_b.any():
            reached.append(sk)
        else:
            yield sk.param_name, torch.zeros_like(modules[sk.name].weight)
    for sk, g in decoder.decode_many(reached, stats) if reached else ():
        mod = modules[sk.name]
        yield sk.param_name, to_weight_layout(mod, g.to(mod.weight.dtype))


def decoded_gradients(
    model: nn.Module,
    view_batches: list[dict],
    decoder: Decoder | str,
    probe: ProbeConfig,
    loss_fn: LossFn | None = None,
    aggregate: str = "mean",
    stats=None,
    reduce: bool = False,
    checked: bool = False,
) -> dict[str, torch.Tensor]:
    """Decoded full-weight gradient of mean_v loss_fn(model, view_batches[v]) per probed Linear.

    Keyed by the weight's parameter name (``model.layers.0.self_attn.q_proj.weight``). The model's weights
    are not modified. ``aggregate`` is ``"mean"``, ``"balanced"`` (each view's gradient divided by its norm before
    the mean) or ``"momentum"`` (EMA over the views in order);
    ``stats`` are optional :class:`r2f.gradients.InputStats` for the Σ-prior decoders.
    """
    return dict(iter_decoded_gradients(model, view_batches, decoder, probe, loss_fn, aggregate, stats, reduce, checked))
