"""The Python API mirrors the CLI: same option names and defaults, real signatures, errors naming CLI flags."""

from __future__ import annotations

import inspect
import json

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
    assert seen["forget_split"] == "forget05" and seen["retain_split"] == "retain90" and seen["num_threads"] == 1
    with pytest.raises(R2FInputError, match="--out must be a file path"):
        r2f.evaluate("some/model", data, out=tmp_path)
    with pytest.raises(R2FInputError, match="--max-items"):
        r2f.evaluate("some/model", data, max_items=0)


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
