"""Torch intra-op threads: small models run faster on one thread.

The matrices of models under ~50M parameters are too small to gain from OpenMP threads, and on a busy
CPU (shared CI machines) OpenMP spin-waits can make them many times slower. Work on such models runs
with one thread; the previous setting is restored afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

SMALL_MODEL_PARAMS = 50_000_000


def is_small(model: torch.nn.Module) -> bool:
    return sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS


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


def threads_for(model: torch.nn.Module) -> int | None:
    """1 for small models, ``None`` (unchanged) otherwise."""
    return 1 if is_small(model) else None
