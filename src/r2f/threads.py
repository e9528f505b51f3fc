"""Torch intra-op threads: how many each r2f command uses, and why (:func:`choose_threads`).

Why a policy at all: OpenMP threads spin-wait for each other. When another job holds a core, every parallel
region waits for the thread that lost its core, so a run with as many threads as cores slows down far more than
in proportion to the load: on the 2-core CI machine, next to one busy process, 6 R2F steps on ``tiny`` took 54–59 s
with torch's default threads and 3.5 s with one (issue 17). Small models do not gain from threads even on an idle
machine: their matrices are too small to split. So every command asks the policy once per model-running stage.

Where it applies: ``r2f unlearn``, ``train``, ``train-decoder``, ``fidelity``, ``eval``, ``demo`` and ``bench``
(each takes ``--threads N``), and the Python entry points behind them (``r2f.unlearn``, ``r2f.train_decoder``,
``r2f.evaluate``: ``threads=``). The count used is recorded in each run's output (manifest ``threads``, decoder
and training metadata, ``eval.json`` meta, fidelity.json).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from r2f.errors import R2FInputError

#: Models under this many parameters run on one thread (their matrices gain nothing from more).
SMALL_MODEL_PARAMS = 50_000_000
#: The user's explicit OpenMP setting, honoured as given.
OMP_ENV = "OMP_NUM_THREADS"
#: Explicit ``--threads N`` / ``threads=N`` of the command or call in progress (a context variable, so nested r2f
#: calls, e.g. the demo's unlearning runs, inherit it and leave nothing behind).
_REQUESTED: contextvars.ContextVar[int | None] = contextvars.ContextVar("r2f_threads_requested", default=None)
#: The choice in force, for the run's record.
_ACTIVE: contextvars.ContextVar["ThreadChoice | None"] = contextvars.ContextVar("r2f_threads_active", default=None)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and the rule that gave it (``--threads``, ``OMP_NUM_THREADS``, ``small model``,
    ``free cores``), with the facts it was read from."""

    threads: int
    source: str
    cores: int | None = None
    load_1min: float | None = None
    own_load: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def choose_threads(params: int | None, *, requested: int | None = None, env_threads: str | None = None,
                   cores: int = 1, load: float | None = None, own_load: float = 0.0,
                   ceiling: int | None = None) -> ThreadChoice:
    """The policy: intra-op threads for work on a model of ``params`` parameters (``None``: unknown, e.g. a named
    model not yet loaded, treated as large).

    In order:

    1. ``requested`` (``--threads N``, ``threads=N``) is used as given;
    2. else ``env_threads`` (the user's ``OMP_NUM_THREADS``), when it is a positive integer (OpenMP ignores
       anything else, and so does r2f);
    3. else a model under :data:`SMALL_MODEL_PARAMS` gets 1 thread;
    4. else the cores free to this process: ``cores`` (those it may run on) minus the load other processes put on
       them, ``load − own_load`` (the 1-minute load average less this process's own share of it), rounded to the
       nearest integer; at least 1, at most ``ceiling`` (torch's current setting: its default is the physical
       core count, and a user who lowered it from Python keeps that bound).
    """
    facts = {"cores": cores, "load_1min": load, "own_load": own_load}
    if requested is not None:
        return ThreadChoice(max(1, int(requested)), "--threads", **facts)
    env = _positive_int(env_threads)
    if env is not None:
        return ThreadChoice(env, OMP_ENV, **facts)
    if params is not None and params < SMALL_MODEL_PARAMS:
        return ThreadChoice(1, "small model", **facts)
    free = free_cores(cores, load, own_load)
    return ThreadChoice(max(1, min(free, cores, ceiling or cores)), "free cores", **facts)


def free_cores(cores: int, load: float | None, own_load: float = 0.0) -> int:
    """``cores`` less the load other processes put on them (the 1-minute ``load`` less this process's own share),
    rounded to the nearest integer; may be 0 or less on an overloaded machine (callers take at least 1)."""
    return int(math.floor(cores - max(0.0, (load or 0.0) - own_load) + 0.5))


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(str(value).strip())
    except ValueError:
        return None
    return n if n >= 1 else None


# ---------------------------------------------------------------------------- facts of this machine


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average (runnable processes, averaged), or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def own_load() -> float:
    """This process's expected share of the 1-minute load average: its CPU use per second since it started, times
    the weight the load average's exponential window (1 minute) gives that time. Without it a long run (the demo)
    would count its own earlier stages as another job's load. 0 where /proc is missing."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        age = max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 1e-3)
    except (OSError, ValueError, IndexError):
        return 0.0
    t = os.times()
    return (t.user + t.system) / age * (1.0 - math.exp(-age / 60.0))


def model_params(model: Any) -> int | None:
    """Parameter count of a module, a ``(model, tokenizer)`` pair, a list of these (the largest), or a model directory
    (its safetensors bytes / 4, i.e. fp32; a bf16 file counts half its parameters, which only matters near the
    threshold); else None."""
    if isinstance(model, list):  # a proxy ladder: its largest member sets the policy
        return max((model_params(m) or 0 for m in model), default=0) or None
    if isinstance(model, tuple):
        model = model[0]
    if hasattr(model, "parameters"):
        return sum(p.numel() for p in model.parameters())
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        size = sum(f.stat().st_size for f in Path(model).glob("*.safetensors"))
        return size // 4 if size > 0 else None
    return None


# ---------------------------------------------------------------------------- applying the policy


def check_threads(n: Any) -> int | None:
    """``--threads`` as given: None, or an integer >= 1 (R2FInputError naming --threads otherwise)."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise R2FInputError(f"must be an integer >= 1, got {n!r}", source="--threads")
    return n


@contextlib.contextmanager
def requested_threads(n: int | None) -> Iterator[None]:
    """Within the block, every r2f stage uses ``n`` threads (``None``: the policy decides). For the CLI layer
    and the Python entry points, which take ``--threads`` / ``threads=``."""
    n = check_threads(n)
    if n is None:
        yield
        return
    token = _REQUESTED.set(n)
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def current_request() -> int | None:
    """The thread count an enclosing :func:`requested_threads` asks for (None: the policy decides). Worker
    processes do not inherit it: :func:`r2f.parallel.run_jobs` passes it to its workers, which re-enter the block."""
    return _REQUESTED.get()


def thread_choice(model: Any, requested: int | None = None) -> ThreadChoice:
    """:func:`choose_threads` for ``model`` (module, pair or directory) on this machine, now."""
    return choose_threads(model_params(model), requested=check_threads(requested) or _REQUESTED.get(),
                          env_threads=os.environ.get(OMP_ENV), cores=available_cores(), load=load_average(),
                          own_load=own_load(), ceiling=torch.get_num_threads())


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (``None`` leaves them unchanged); restored afterwards."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def model_threads_for(model: Any, requested: int | None = None) -> Iterator[ThreadChoice]:
    """Run the block with :func:`thread_choice` of ``model``; yields the choice (restored afterwards)."""
    choice = thread_choice(model, requested)
    token = _ACTIVE.set(choice)
    try:
        with torch_threads(choice.threads):
            yield choice
    finally:
        _ACTIVE.reset(token)


def threads_for(model: Any) -> int:
    """The thread count the policy gives ``model`` now."""
    return thread_choice(model).threads


def model_threads(arg: str) -> Callable[[F], F]:
    """Decorator: run the function under :func:`model_threads_for` of its parameter ``arg`` (a model or path)."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with model_threads_for(sig.bind_partial(*args, **kwargs).arguments.get(arg)):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def threads_record() -> dict[str, Any]:
    """What a run records: the choice in force, or torch's current count when no r2f stage chose."""
    choice = _ACTIVE.get()
    return choice.to_dict() if choice is not None else {"threads": torch.get_num_threads(), "source": "unchanged"}
