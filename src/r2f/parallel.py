"""Independent runs side by side: the demo's and the bench's rows on the cores a small model leaves idle.

Why: a model under 50M parameters runs on one thread (:mod:`r2f.threads`), so a demo that unlearns and scores
its rows one after the other keeps one core of two busy. The rows are independent (each a seed-fixed run and
its evaluation), so running them in worker processes changes no number, only the wall time. Workers are spawned
(not forked: a forked torch process can deadlock on the parent's thread pools) and each gets one job at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any, Callable, Sequence

from r2f.errors import R2FInputError
from r2f.threads import (available_cores, current_request, free_cores, load_average, own_load, requested_threads,
                         thread_choice)

JOBS_ENV = "R2F_JOBS"


def worker_count(requested: int | None = None, *, threads_per_job: int | None = None, model: Any = None,
                 jobs: int | None = None) -> int:
    """How many runs to keep going at once.

    ``requested`` (``--jobs N``) wins, else ``R2F_JOBS``; else the cores free to this process (its CPU affinity
    less the load other processes put on it, :func:`r2f.threads.free_cores`) divided by the threads each job
    uses: ``threads_per_job``, else the caller's ``--threads``, else what the thread policy gives ``model`` (1 for
    a small one). Never more than ``jobs`` (the number of runs), never fewer than 1.
    """
    if requested is None:
        env = os.environ.get(JOBS_ENV, "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise R2FInputError(f"must be a positive integer, got {env!r}", source=JOBS_ENV) from None
    if requested is not None:
        if int(requested) < 1:
            raise R2FInputError(f"must be at least 1, got {requested}", source="--jobs")
        n = int(requested)
    else:
        per_job = threads_per_job or current_request() or (thread_choice(model).threads if model is not None else 1)
        n = max(1, free_cores(available_cores(), load_average(), own_load()) // max(1, int(per_job)))
    return max(1, min(n, jobs)) if jobs is not None else max(1, n)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int,
             on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """``[fn(*args) for args in jobs]``, ``workers`` at a time; results in the order of ``jobs``.

    ``fn`` must be a module-level function (workers import it). With one worker everything runs here, in this
    process; a worker runs each job under the caller's ``--threads`` (a context variable, which does not cross
    into another process by itself). ``on_done(i, result)`` is called in this process as each job finishes (for progress lines). The
    first job that raises cancels the ones not started and its exception is raised here; Ctrl-C stops the workers
    (they receive the same SIGINT) and is re-raised.
    """
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for i, args in enumerate(jobs):
            results.append(fn(*args))
            if on_done is not None:
                on_done(i, results[-1])
        return results
    results: list[Any] = [None] * len(jobs)
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        threads = current_request()
        futures = {pool.submit(_with_threads, threads, fn, *args): i for i, args in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_done is not None:
                on_done(i, results[i])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _with_threads(threads: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker, under the thread count the caller requested."""
    with requested_threads(threads):
        return fn(*args)
