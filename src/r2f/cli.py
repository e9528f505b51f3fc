"""The ``r2f`` command line.

Each command lives in its own module under :mod:`r2f.commands` and registers itself on
:data:`app` (defined in :mod:`r2f.commands._app`, which the command modules import; this module imports
them, in :func:`_load_commands`, so there is no import cycle). :func:`main` adds what every command
shares: ``--config FILE.yaml`` (values become the command's defaults; command-line flags still win)
and the exit-code contract (0 success, 2 bad input with one line naming the file/field/line at fault,
3 a run that kept producing NaN/Inf beyond --max-failures).

The command modules (and torch, through :mod:`r2f.distributed`) are imported when a command line is run,
after :func:`r2f.quiet.silence_third_party` has set what torch and transformers read when they load.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

import r2f.commands as commands
from r2f.commands._app import (  # noqa: F401  (app, command_group and the options: importable from here too)
    INTERRUPT_LINES,
    _check_config_keys,
    _read_config,
    app,
    command_group,
    jobs_option,
    threads_option,
)
from r2f.errors import R2FInputError, R2FNumericalError
from r2f.quiet import VERBOSE_ENV, silence_third_party

#: Commands that split their work over the ranks of a torchrun / accelerate launch (docs/distributed.md).
DATA_PARALLEL_COMMANDS = ("unlearn", "eval", "train-decoder")


def _load_commands() -> None:
    """Import every command module, which registers its commands on :data:`app`. Safe to call again: a module
    runs once per process (``sys.modules``), so a later call only looks the modules up."""
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"r2f.commands.{info.name}")


def _pop_config(argv: list[str]) -> tuple[list[str], dict[str, Any] | None, str | None]:
    """Remove ``--config FILE`` from argv and return the YAML mapping it names (and the file)."""
    out, config_path = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise R2FInputError("--config needs a file path", source="--config")
            config_path = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
            i += 1
            continue
        out.append(arg)
        i += 1
    if config_path is None:
        return out, None, None
    return out, _read_config(Path(config_path)), config_path


def _named_command(argv: list[str]) -> tuple[list[str], Any]:
    """The command the line names, following groups (``ledger apply``): its names and its click command."""
    cmd, path = typer.main.get_command(app), []
    for name in (a for a in argv if not a.startswith("-")):
        sub = getattr(cmd, "commands", {}).get(name)
        if sub is None:
            break
        cmd, path = sub, [*path, name]
    return path, cmd


def _interrupted(argv: list[str]) -> str:
    """One line for Ctrl-C: what was kept, and the exact command that continues from a checkpoint."""
    _load_commands()
    for line in INTERRUPT_LINES:  # e.g. r2f ledger apply keeps its run inside the ledger, not in an --out
        own = line(argv)
        if own is not None:
            return own
    out = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"), None) or \
        next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), None)
    steps = sorted(Path(out, "checkpoints").glob("step-*/state.json")) if out else []
    if not steps:
        return "r2f: interrupted; nothing was written (outputs are only written, atomically, when a command finishes)"
    again = argv if "--resume" in argv else [*argv, "--resume"]
    return (f"r2f: interrupted; checkpoint kept at {steps[-1].parent}; continue with: "
            f"r2f {shlex.join(again)}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    try:
        argv, config, config_path = _pop_config(argv)
        if "--verbose" in argv:  # accepted anywhere on the line, like --config
            argv = [a for a in argv if a != "--verbose"]
            os.environ[VERBOSE_ENV] = "1"
        silence_third_party()
        _load_commands()
        command = next((a for a in argv if not a.startswith("-")), None)
        default_map = None
        if config is not None:
            path, cmd = _named_command(argv)
            if path:  # an unknown command: click reports it
                _check_config_keys(cmd, config, config_path, " ".join(path))
                for name in reversed(path):  # a group's sub-command (ledger apply) reads {"ledger": {"apply": ...}}
                    config = {name: config}
                default_map = config
        # imported after silence_third_party(): torch reads TORCH_CPP_LOG_LEVEL when it loads
        from r2f import distributed

        if command not in DATA_PARALLEL_COMMANDS and int(os.environ.get("RANK", "0")) != 0:
            return  # under torchrun, commands that are not data-parallel run once, on rank 0, as one process
        # torchrun / accelerate launch (WORLD_SIZE > 1): one process group for the whole command
        started = command in DATA_PARALLEL_COMMANDS and distributed.init_from_env()  # True: ours to end
        try:
            app(args=argv, prog_name="r2f", default_map=default_map, standalone_mode=True)
        except SystemExit as exc:
            if exc.code in (0, None):
                distributed.teardown(started)
            elif exc.code == 130 and distributed.is_main():  # Ctrl-C (typer exits 130 without a word)
                print(_interrupted(given), file=sys.stderr)
            raise
        except KeyboardInterrupt:
            if distributed.is_main():
                print(_interrupted(given), file=sys.stderr)
            sys.exit(130)
        else:
            distributed.teardown(started)
    except R2FInputError as exc:
        print("r2f: error: " + " ".join(str(exc).splitlines()), file=sys.stderr)  # always one line
        sys.exit(2)
    except R2FNumericalError as exc:  # not bad input: the run diverged (NaN/Inf) beyond --max-failures
        print("r2f: error: numerical failure: " + " ".join(str(exc).splitlines()), file=sys.stderr)
        sys.exit(3)
