"""The Python API mirrors the CLI: same option names and defaults, real signatures, errors naming CLI flags."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import r2f
from r2f.errors import R2FInputError

#: CLI command -> the function that is its Python twin.
TWINS = {"unlearn": r2f.unlearn, "train-decoder": r2f.train_decoder, "eval": r2f.evaluate}


def _cli_params(command: str) -> dict:
    import typer

    from r2f.cli import _load_commands, app

    _load_commands()
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


@pytest.mark.parametrize("command", sorted(TWINS))
def test_python_function_takes_every_cli_option_with_its_default(command):
    fn = TWINS[command]
    sig = inspect.signature(fn)
    kinds = {p.kind for p in sig.parameters.values()}
    assert inspect.Parameter.VAR_POSITIONAL not in kinds  # a real signature, not (*args, **kwargs)
    assert fn.__doc__ and f"r2f {command}" in fn.__doc__
    for name, param in _cli_params(command).items():
        if name == "option":  # -o key=value: the method's options, as keyword arguments
            assert sig.parameters["options"].kind is inspect.Parameter.VAR_KEYWORD
            continue
        assert name in sig.parameters, f"r2f {command} --{name.replace('_', '-')} has no Python argument {name}"
        py_default = sig.parameters[name].default
        if param.required:
            continue  # required on the command line; positional or None (in-memory use) in Python
        if name == "rank_a":
            assert py_default == param.default == 0
            continue
        assert py_default == param.default, (command, name, py_default, param.default)


def test_evaluate_writes_out_and_returns_the_dict(tmp_path, monkeypatch):
    """r2f.evaluate(model, data, forget=..., out=...) is r2f eval: the CLI's names, eval.json written to out."""
    import r2f.eval

    seen = {}

    def fake_suite(model, data_dir, **kw):
        seen.update(kw, model=model)
        return {"summary": {"forget_quality": 0.5}, "meta": {"wall_s": 0.0}}

    monkeypatch.setattr(r2f.eval, "evaluate", fake_suite)
    data = tmp_path / "world"
    data.mkdir()
    out = tmp_path / "eval.json"
    result = r2f.evaluate("some/model", data, forget="forget05", retain_split="retain90", threads=1, out=out)
    assert result["summary"]["forget_quality"] == 0.5 and json.loads(out.read_text()) == result
    spec = seen["spec"]  # one checked EvalSpec, not loose keywords
    assert (spec.forget, spec.retain_split, spec.threads, spec.max_new_tokens) == ("forget05", "retain90", 1, 200)
    with pytest.raises(R2FInputError, match="--out must be a file path"):
        r2f.evaluate("some/model", data, out=tmp_path)
    with pytest.raises(R2FInputError, match="--max-items"):
        r2f.evaluate("some/model", data, max_items=0)


def test_evaluate_hands_realfacts_its_spec(monkeypatch):
    """r2f.evaluate(..., bench="realfacts") hands evaluate_realfacts the one checked EvalSpec, not loose keywords."""
    import r2f.eval.realfacts

    seen = {}

    def fake_realfacts(model, **kw):
        seen.update(kw)
        return {"summary": {}, "meta": {}}

    monkeypatch.setattr(r2f.eval.realfacts, "evaluate_realfacts", fake_realfacts)
    r2f.evaluate("some/model", bench="realfacts", batch_size=4, threads=1)
    assert set(seen) == {"tokenizer", "data", "spec"}
    assert (seen["spec"].bench, seen["spec"].batch_size, seen["spec"].max_new_tokens) == ("realfacts", 4, 32)


def test_errors_name_cli_flags(tmp_path, world_dir):
    with pytest.raises(R2FInputError, match="pass --retain-split"):
        r2f.evaluate("no/such/model", world_dir, forget="proxy")  # proxy has no retain split of its own
    with pytest.raises(R2FInputError, match=r"--out exists; pass --overwrite"):
        (tmp_path / "dec.safetensors").write_bytes(b"")
        r2f.train_decoder("no/such/model", world_dir, out=tmp_path / "dec.safetensors")


def test_eval_cli_names_retain_split(tmp_path, world_dir, capsys):
    from r2f.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "no/such/model", "--data", str(world_dir), "--forget", "proxy", "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--retain-split" in err and "retain_split" not in err


def test_the_eval_spec_is_checked_and_frozen_once():
    """EvalSpec holds an evaluation's settings: the bench's defaults resolved, every value checked at construction
    (an error naming the CLI flag), frozen; sequences given as lists are frozen as tuples."""
    import dataclasses

    from r2f.eval_spec import EvalSpec

    world, facts = EvalSpec(), EvalSpec(bench="realfacts")
    assert (world.forget, world.max_new_tokens, facts.forget, facts.max_new_tokens) == ("forget10", 200, None, 32)
    assert EvalSpec(forget="forget05", max_new_tokens=7).forget == "forget05"
    assert EvalSpec(metrics=["forget_quality"], stop_strings=["\n"]).metrics == ("forget_quality",)
    assert EvalSpec(documents=Path("docs.jsonl")).documents == "docs.jsonl"  # a path is kept as its name
    with pytest.raises(dataclasses.FrozenInstanceError):
        world.batch_size = 4
    for settings, source, words in (
            ({"bench": "nope"}, "--bench", ["unknown bench 'nope'", "world, realfacts"]),
            ({"batch_size": 0}, "--batch-size", ["must be >= 1"]),
            ({"relearn": -1}, "--relearn", ["must be >= 0"]),
            ({"relearn_lr": 0.0}, "--relearn-lr", ["positive"]),
            ({"relearn_batch_size": 0}, "relearn_batch_size", [">= 1"]),
            ({"max_items": 0}, "--max-items", [">= 1"]),
            ({"max_new_tokens": 0}, "--max-new-tokens", [">= 1"]),
            ({"threads": 0}, "--threads", [">= 1"]),
            ({"k": 1.5}, "k", ["(0, 1]"]),
            ({"batch_size": 2.5}, "--batch-size", ["expected int"]),
            ({"metrics": "forget_quality"}, "metrics", ["expected tuple of str"]),
            ({"bench": "realfacts", "forget": "forget05"}, "--forget", ["only for --bench world"]),
            ({"bench": "realfacts", "retain_split": "retain95"}, "--retain-split", ["only for --bench world"]),
            ({"bench": "realfacts", "relearn": 3}, "--relearn", ["only for --bench world"]),
            ({"bench": "realfacts", "documents": "forget10"}, "--documents", ["only for --bench world"]),
            ({"documents": 10}, "--documents", ["expected str"])):
        with pytest.raises(R2FInputError) as exc:
            EvalSpec(**settings)
        assert exc.value.source == source and all(w in str(exc.value) for w in words), (settings, str(exc.value))


def test_r2f_eval_takes_its_settings_defaults_and_help_from_the_spec():
    """Every setting of EvalSpec but the Python-only ones is an r2f eval option with the spec's default and help."""
    from r2f.eval_spec import PYTHON_ONLY, EvalSpec

    params = _cli_params("eval")
    shared = set(params) & {f.name for f in EvalSpec.fields()}
    assert shared == {f.name for f in EvalSpec.fields()} - set(PYTHON_ONLY)
    for name in shared - {"threads"}:  # --threads is every command's shared option (r2f.commands._app)
        assert params[name].default == EvalSpec.defaults()[name], name
        assert params[name].help == EvalSpec.help(name), name


def test_r2f_demo_takes_its_settings_defaults_and_help_from_demo_config():
    """Every r2f demo option that is a DemoConfig field has the config's default and help (the CLI reads them from
    r2f.demo_spec, which imports no torch); the Python-only settings have no flag."""
    from r2f.demo_spec import DEMO_PYTHON_ONLY, DemoConfig

    params = _cli_params("demo")
    fields = {f.name for f in DemoConfig.fields()}
    shared = set(params) & fields
    assert {"quick", "target", "bench", "seed", "steps"} <= shared and not shared & set(DEMO_PYTHON_ONLY)
    for name in shared - {"jobs"}:  # --jobs is the shared option of demo and bench (r2f.commands._app)
        assert params[name].default == DemoConfig.defaults()[name], name
        assert params[name].help == DemoConfig.help(name), name


def test_the_suite_takes_one_spec_or_its_fields_as_keywords(monkeypatch):
    """r2f.eval.evaluate(..., spec=EvalSpec(...)) or the same settings as keywords (the suite's older names
    forget_split / num_threads included) reach the suite as one equal spec; both at once, or an unknown keyword,
    is a TypeError as for any call."""
    import r2f.eval.suite as suite
    from r2f.demo import DemoConfig
    from r2f.eval_spec import EvalSpec

    seen = []
    monkeypatch.setattr(suite, "_evaluate", lambda model, data_dir, spec, **kw: seen.append(spec) or {})
    spec = EvalSpec(forget="forget05", max_items=4, threads=1, seed=3)
    suite.evaluate("m", "d", spec=spec)
    suite.evaluate("m", "d", forget_split="forget05", max_items=4, num_threads=1, seed=3)
    suite.evaluate("m", "d", forget="forget05", max_items=4, threads=1, seed=3)
    assert seen == [spec, spec, spec] and seen[0] is spec
    with pytest.raises(TypeError, match="not both"):
        suite.evaluate("m", "d", spec=spec, max_items=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_item'"):
        suite.evaluate("m", "d", max_item=2)
    with pytest.raises(TypeError, match="same setting"):
        suite.evaluate("m", "d", forget="forget05", forget_split="forget05")
    with pytest.raises(R2FInputError, match="realfacts"):
        suite.evaluate("m", "d", spec=EvalSpec(bench="realfacts", threads=1))
    # the demo (and r2f bench, r2f ledger's benchmarks) score every model with the spec its config builds
    assert DemoConfig(quick=True, seed=2).eval_spec == EvalSpec(forget="forget10", max_items=48, seed=2)
