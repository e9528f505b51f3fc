"""Torch intra-op threads: small models run faster on one thread.

The matrices of models under ~50M parameters are too small to gain from OpenMP threads, and on a busy
CPU (shared CI machines) OpenMP spin-waits can make them many times slower. Work on such models runs
with one thread; the previous setting is restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch

SMALL_MODEL_PARAMS = 50_000_000


def is_small(model: Any) -> bool:
    """A module, a ``(model, tokenizer)`` pair or a model directory (judged by its safetensors size)."""
    if isinstance(model, tuple):
        model = model[0]
    if hasattr(model, "parameters"):
        return sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        size = sum(f.stat().st_size for f in Path(model).glob("*.safetensors"))
        return 0 < size < 4 * SMALL_MODEL_PARAMS
    return False


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (``None`` leaves them unchanged)."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(model: Any) -> int | None:
    """1 for small models, ``None`` (unchanged) otherwise."""
    return 1 if is_small(model) else None


def small_model_threads(arg: str):
    """Decorator: run the function with :func:`threads_for` of its ``arg`` parameter (a model or path)."""
    import functools
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            model = sig.bind_partial(*args, **kwargs).arguments.get(arg)
            with torch_threads(threads_for(model) if model is not None else None):
                return fn(*args, **kwargs)

        return inner

    return wrap
