"""Thread control: the policy on faked machines, --threads on every model-running command, OMP_NUM_THREADS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from r2f.errors import R2FInputError
from r2f.threads import SMALL_MODEL_PARAMS, choose_threads, model_params, requested_threads, thread_choice
from test_methods import tiny_setup  # noqa: F401  (fixture: a random tiny model and forget/retain files)

LARGE = 10 * SMALL_MODEL_PARAMS


@pytest.mark.parametrize("kw, threads, source", [
    # explicit --threads wins over everything, also above the free cores
    ({"params": LARGE, "requested": 3, "env_threads": "2", "cores": 2, "load": 5.0}, 3, "--threads"),
    # the user's OMP_NUM_THREADS is honoured as given, for small models too
    ({"params": 1000, "env_threads": "3", "cores": 2, "load": 1.0}, 3, "OMP_NUM_THREADS"),
    # malformed or non-positive OMP_NUM_THREADS is ignored (as OpenMP ignores it)
    ({"params": 1000, "env_threads": "abc", "cores": 8}, 1, "small model"),
    ({"params": 1000, "env_threads": "0", "cores": 8}, 1, "small model"),
    # small models keep one thread on an idle many-core machine
    ({"params": SMALL_MODEL_PARAMS - 1, "cores": 16, "load": 0.0}, 1, "small model"),
    # large models: the cores other processes leave free, at most torch's own count
    ({"params": LARGE, "cores": 8, "load": 0.2, "ceiling": 8}, 8, "free cores"),
    ({"params": LARGE, "cores": 8, "load": 0.2, "ceiling": 4}, 4, "free cores"),
    ({"params": LARGE, "cores": 8, "load": 3.0, "ceiling": 8}, 5, "free cores"),
    # the case: 2 cores, one busy competitor -> one thread; overloaded -> still one, never zero
    ({"params": LARGE, "cores": 2, "load": 1.0, "ceiling": 2}, 1, "free cores"),
    ({"params": LARGE, "cores": 2, "load": 7.5, "ceiling": 2}, 1, "free cores"),
    # this process's own share of the load average is not someone else's load
    ({"params": LARGE, "cores": 4, "load": 3.9, "own_load": 3.0, "ceiling": 4}, 3, "free cores"),
    # unknown size (a named model not loaded yet) counts as large; no load average (not Linux/mac): all cores
    ({"params": None, "cores": 6, "load": None, "ceiling": 6}, 6, "free cores"),
])
def test_policy_on_faked_machines(kw, threads, source):
    params = kw.pop("params")
    choice = choose_threads(params, **kw)
    assert (choice.threads, choice.source) == (threads, source)
    assert choice.to_dict()["threads"] == threads


def test_requested_threads_validates_and_reaches_nested_choices(tmp_path):
    for bad in (0, -2, True, 1.5, "2"):
        with pytest.raises(R2FInputError, match="--threads"):
            with requested_threads(bad):
                pass
    small = torch.nn.Linear(4, 4)
    with requested_threads(3):
        assert thread_choice(small).threads == 3  # what the demo's inner stages see under `r2f demo --threads 3`
        assert thread_choice(small, 2).threads == 2  # an explicit argument of an inner call wins
    assert thread_choice(small).source != "--threads"  # nothing left behind


def test_model_params_of_modules_pairs_and_directories(tmp_path):
    lin = torch.nn.Linear(10, 3)
    assert model_params(lin) == 33 and model_params((lin, object())) == 33
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4000)
    assert model_params(tmp_path) == 1000
    assert model_params(tmp_path / "missing") is None and model_params("smollm2") is None


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "r2f", *args], capture_output=True, text=True, env=env)


def test_every_model_running_command_takes_threads():
    # one process lists every command's options (each a click command of the same app)
    import typer

    from r2f.cli import _load_commands, app

    _load_commands()
    commands = typer.main.get_command(app).commands
    for name in ("unlearn", "train", "train-decoder", "fidelity", "eval", "demo", "bench"):
        assert "--threads" in {o for p in commands[name].params for o in p.opts}, name
    r = _cli("unlearn", "--help")
    assert r.returncode == 0 and "--threads" in r.stdout


def test_threads_flag_and_omp_env_are_honoured_and_recorded(tiny_setup, tmp_path, monkeypatch):  # noqa: F811
    """In-process ``r2f unlearn``: OMP_NUM_THREADS is used as given, --threads beats it, a small model without
    either gets 1 thread; the manifest records the count and its rule, and torch's setting is restored."""
    from r2f.cli import main

    def run(name, *extra):
        out = tmp_path / name
        with pytest.raises(SystemExit) as exc:
            main(["unlearn", "--model", str(tiny_setup["model"]), "--forget", str(tiny_setup["forget"]),
                  "--method", "grad_ascent", "--steps", "1", "--out", str(out), *extra])
        assert exc.value.code in (0, None)
        return json.loads((out / "manifest.json").read_text())["threads"]

    before = torch.get_num_threads()
    seen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n, _set=torch.set_num_threads: (seen.append(n), _set(n)))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    rec = run("omp")
    assert (rec["threads"], rec["source"]) == (3, "OMP_NUM_THREADS") and 3 in seen
    assert torch.get_num_threads() == before
    rec = run("flag", "--threads", "2")
    assert (rec["threads"], rec["source"]) == (2, "--threads")
    monkeypatch.delenv("OMP_NUM_THREADS")
    rec = run("default")
    assert (rec["threads"], rec["source"]) == (1, "small model")
    r = _cli("unlearn", "--model", str(tiny_setup["model"]), "--forget", str(tiny_setup["forget"]),
             "--method", "grad_ascent", "--out", str(tmp_path / "bad"), "--threads", "0")
    assert r.returncode == 2 and "--threads" in r.stderr and len(r.stderr.strip().splitlines()) == 1
