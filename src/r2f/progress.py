"""Progress bars for long work (tqdm on stderr; silent off rank 0 or with R2F_NO_PROGRESS=1)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    if os.environ.get("R2F_NO_PROGRESS") == "1":
        return False
    return os.environ.get("RANK", "0") == "0"


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", **kw) -> tqdm:
    # Redrawn bars flood log files: when stderr is not a terminal, refresh rarely.
    kw.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, total=total, desc=desc, disable=not progress_enabled(), dynamic_ncols=True, leave=False, **kw)


def quiet_hf_progress() -> None:
    """Silence transformers' own progress bars (loading/saving shards) when ours are off."""
    if not progress_enabled():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
