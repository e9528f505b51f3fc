"""r2f.parallel: rows side by side give the same results as one after the other."""

from __future__ import annotations

import os

import pytest

from r2f.errors import R2FInputError
from r2f.parallel import JOBS_ENV, run_jobs, worker_count


def test_two_workers_return_what_one_returns_in_job_order():
    jobs = [(7, 5), (2, 10), (3, 3), (10, 2)]
    done: list[int] = []
    seq = run_jobs(pow, jobs, workers=1)
    par = run_jobs(pow, jobs, workers=2, on_done=lambda i, r: done.append(i))
    assert seq == par == [7 ** 5, 2 ** 10, 27, 100]
    assert sorted(done) == [0, 1, 2, 3]


def test_workers_are_other_processes_and_one_worker_runs_here():
    assert set(run_jobs(os.getpid, [(), ()], workers=1)) == {os.getpid()}
    assert os.getpid() not in run_jobs(os.getpid, [(), ()], workers=2)


def test_a_failing_job_raises_its_error_here():
    with pytest.raises(ValueError, match="invalid literal"):
        run_jobs(int, [("1",), ("x",), ("3",)], workers=2)


def test_worker_count_follows_request_env_and_caps(monkeypatch):
    monkeypatch.delenv(JOBS_ENV, raising=False)
    assert worker_count(3) == 3
    assert worker_count(3, jobs=2) == 2
    monkeypatch.setenv(JOBS_ENV, "4")
    assert worker_count() == 4
    assert worker_count(1) == 1  # the explicit request wins over the environment
    monkeypatch.setenv(JOBS_ENV, "two")
    with pytest.raises(R2FInputError, match=JOBS_ENV):
        worker_count()
    with pytest.raises(R2FInputError, match="--jobs"):
        worker_count(0)


def test_worker_count_leaves_cores_other_processes_use(monkeypatch):
    import r2f.parallel as par

    monkeypatch.delenv(JOBS_ENV, raising=False)
    monkeypatch.setattr(par, "available_cores", lambda: 2)
    monkeypatch.setattr(par, "own_load", lambda: 0.0)
    monkeypatch.setattr(par, "load_average", lambda: 0.1)
    assert worker_count() == 2                      # an idle 2-core machine: two runs at once
    monkeypatch.setattr(par, "load_average", lambda: 1.0)
    assert worker_count() == 1                      # one core busy with another job: one run
    monkeypatch.setattr(par, "load_average", lambda: 8.0)
    assert worker_count() == 1                      # never fewer than one
    monkeypatch.setattr(par, "load_average", lambda: 0.0)
    assert worker_count(threads_per_job=2) == 1     # a job that uses both cores runs alone
