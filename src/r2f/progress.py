"""Progress for long work: tqdm bars on a terminal, a few plain lines in logs; silent off rank 0 or with
R2F_NO_PROGRESS=1."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    if os.environ.get("R2F_NO_PROGRESS") == "1":
        return False
    return os.environ.get("RANK", "0") == "0"


class LogProgress:
    """Progress for logs (stderr not a terminal): a line at each quarter of the work, never a redrawn bar.

    A redrawn bar in a log file is one long line of carriage returns, and a bar that refreshes rarely shows
    only "0 %" for short work; four plain lines say how far the work got and how fast it goes.
    """

    def __init__(self, iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "",
                 initial: int = 0, **_ignored):
        self.iterable, self.desc, self.n = iterable, desc, initial
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.postfix = ""
        self._t0 = time.perf_counter()
        self._next = self._milestone(initial)

    def _milestone(self, n: int) -> int:
        if not self.total:
            return 1 << 62
        quarter = max(1, -(-self.total // 4))
        return min(self.total, (n // quarter + 1) * quarter)

    def __iter__(self):
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.n >= self._next:
            dt = time.perf_counter() - self._t0
            pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
            print(f"{self.desc}: {self.n}/{self.total}{pct}, {dt:.1f} s{self.postfix}", file=sys.stderr, flush=True)
            self._next = self._milestone(self.n)

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", " + ", ".join(f"{k} {v}" for k, v in values.items()) if values else ""

    def close(self) -> None:
        pass


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", **kw):
    """A tqdm bar on a terminal; :class:`LogProgress` lines in logs; nothing off rank 0 or when disabled."""
    if progress_enabled() and not sys.stderr.isatty():
        return LogProgress(iterable, total=total, desc=desc, **kw)
    return tqdm(iterable, total=total, desc=desc, disable=not progress_enabled(), dynamic_ncols=True, leave=False,
                mininterval=0.1, **kw)


def quiet_hf_progress() -> None:
    """Silence transformers' own progress bars (loading/saving shards) when ours are off."""
    if not progress_enabled():
        # here: progress bars are drawn where transformers is not loaded (the CLI, r2f.decoders); this only
        # matters to code that loads models, which has imported it already
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
