"""The CLI contract shared by every command: --config, exit codes, atomic outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from r2f.errors import R2FInputError
from r2f.io import atomic_dir, check_out_dir


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "r2f", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    r = _cli("--help")
    assert r.returncode == 0
    for cmd in ("world", "train", "train-decoder", "fidelity", "unlearn", "eval", "report", "demo", "bench"):
        assert cmd in r.stdout, cmd


def test_config_file_supplies_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 7\nqa-per-author: 2\n")
    assert _cli("world", "--out", str(tmp_path / "a"), "--config", str(cfg)).returncode == 0
    assert _cli("world", "--out", str(tmp_path / "b"), "--seed", "7", "--qa-per-author", "2").returncode == 0
    assert (tmp_path / "a" / "forget10.jsonl").read_bytes() == (tmp_path / "b" / "forget10.jsonl").read_bytes()
    assert _cli("world", "--out", str(tmp_path / "c"), "--config", str(cfg), "--seed", "8").returncode == 0
    assert (tmp_path / "a" / "forget10.jsonl").read_bytes() != (tmp_path / "c" / "forget10.jsonl").read_bytes()


def test_bad_config_exits_2_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: [1,\n")
    r = _cli("world", "--out", str(tmp_path / "w"), "--config", str(cfg))
    assert r.returncode == 2 and str(cfg) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("world", "--out", str(tmp_path / "w"), "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr
    assert not (tmp_path / "w").exists()


def test_non_empty_out_needs_overwrite(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = _cli("world", "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "keep.txt").read_text() == "x"
    assert _cli("world", "--out", str(out), "--overwrite").returncode == 0
    assert not (out / "keep.txt").exists() and (out / "world.json").exists()


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_check_out_dir_refuses_source(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    with pytest.raises(R2FInputError, match="source model"):
        check_out_dir(src, overwrite=True, protect=[src])


def test_cli_reference_is_up_to_date():
    """docs/cli.md and docs/method-options.md are generated from the commands and the methods' configuration
    classes; a changed option must be regenerated."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "cli_docs.py"
    res = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_version_prints_and_exits_0():
    from r2f import __version__

    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"r2f {__version__}"


def test_unknown_config_key_exits_2_naming_it(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("authorz: 20\n")
    r = _cli("world", "--out", str(tmp_path / "w"), "--config", str(cfg))
    assert r.returncode == 2 and "authorz" in r.stderr and str(cfg) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def _runner_app():
    from typer.testing import CliRunner

    from r2f.cli import _load_commands, app

    _load_commands()
    return CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}), app


def test_every_command_help_lists_config_and_shows_bools_as_flags():
    """--config FILE is in each command's --help; a boolean option is a bare flag, never '--overwrite <bool>'."""
    runner, app = _runner_app()
    commands = ("world", "train", "train-decoder", "fidelity", "unlearn", "eval", "report", "demo")
    for cmd in commands:
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0, (cmd, r.output)
        assert re.search(r"--config\s+FILE\s", r.output), (cmd, r.output)
        assert "<bool>" not in r.output, (cmd, r.output)
        assert re.search(r"--help\s+Show this message", r.output), (cmd, r.output)
    assert "<bool>" not in runner.invoke(app, ["--help"]).output
    r = runner.invoke(app, ["fidelity", "--help"])
    assert re.search(r"--cost\s+--no-cost\s+Also time", r.output)  # the pair, then the help: no type column
    r = runner.invoke(app, ["unlearn", "--help"])
    assert re.search(r"--overwrite\s+Replace a non-empty", r.output) and re.search(r"--steps\s+<int>", r.output)


def test_config_given_to_the_typer_app_directly_is_applied_and_checked(tmp_path):
    """Without main() (which takes --config off the line first) the option itself reads the file."""
    runner, app = _runner_app()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 7\nqa-per-author: 2\n")
    r = runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "w" / "world.json").read_text())["config"]["qa_per_author"] == 2
    cfg.write_text("authorz: 20\n")
    r = runner.invoke(app, ["world", "--out", str(tmp_path / "x"), "--config", str(cfg)])
    assert isinstance(r.exception, R2FInputError) and "authorz" in str(r.exception) and str(cfg) in str(r.exception)


def test_non_utf8_config_exits_2_naming_line_and_offset(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"seed: 3\n# caf\xe9\n")
    r = _cli("world", "--out", str(tmp_path / "w"), "--config", str(cfg))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{cfg}:2" in r.stderr and "byte offset 13" in r.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,words", [
    (["--decoder", "sketch", "-o", "decoder=ls"], ["-o decoder", "--decoder"]),  # the flag given twice, two ways
    (["-o", "lr=0.1"], ["-o lr", "the flag --lr"]),  # a flag is not a method option
])
def test_unlearn_option_colliding_with_a_flag_is_bad_input(args, words, tmp_path):
    """`-o KEY=...` where KEY is one of unlearn's own flags: exit 2 with one line naming it (it used to be a
    Python TypeError about a repeated keyword argument); nothing is written."""
    r = _cli("unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.jsonl"), "--method", "r2f",
             "--out", str(tmp_path / "o"), *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "o").exists()
