"""Quiet by default: third-party noise that tells a user nothing is silenced unless ``--verbose``.

What is silenced: transformers' "Loading weights" / "Writing model shards" bars and its info/warning log lines,
deprecation warnings raised inside transformers (e.g. ``is_gradient_checkpointing``), and the lines torch's
profiler writes straight to the process's stderr when r2f measures CPU peak memory (``USDT: … profiler_start``,
``CPUAllocator … allocated before the profiling started``). ``r2f … --verbose`` (or ``R2F_VERBOSE=1``) keeps all.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Iterator

VERBOSE_ENV = "R2F_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def silence_third_party() -> None:
    """Called once by the CLI before a command runs (the Python API leaves the caller's settings alone)."""
    if verbose():
        return
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformers(\.|$)")
    # read when transformers / huggingface_hub are first imported: no import (and no delay) here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torch's C++ warnings (e.g. the profiler's "CPUAllocator … allocated before the profiling started" when the
    # CPU peak-memory probe runs) go straight to fd 2 while r2f's own code runs; read when torch loads
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    if "transformers" in sys.modules:  # already imported (an embedding program): set it directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what C++ code writes to file descriptor 2 to /dev/null for the block (unless verbose)."""
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters, some test runners)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
