"""The ``r2f`` command line.

Each command lives in its own module under :mod:`r2f.commands` and registers itself on
:data:`app`. :func:`main` adds what every command shares: ``--config FILE.yaml`` (values become
the command's defaults; command-line flags still win) and the exit-code contract
(0 success, 2 bad input with one line naming the file/field/line at fault, 3 a run that kept
producing NaN/Inf beyond --max-failures).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from r2f.errors import R2FInputError, R2FNumericalError
from r2f.quiet import VERBOSE_ENV, silence_third_party

CONFIG_HELP = ("YAML file of defaults keyed by this command's option names (without the --); flags on the "
               "command line win; an unknown key is an error.")
THREADS_HELP = ("torch intra-op threads (default: OMP_NUM_THREADS when set, else 1 for models under 50M parameters, "
                "else the cores other processes leave free; docs/cli.md).")


def threads_option() -> Any:
    """``--threads N`` of every command that runs a model (r2f.threads has the policy it overrides)."""
    return typer.Option(None, "--threads", metavar="N", help=THREADS_HELP)


def jobs_option() -> Any:
    """``--jobs N`` of the commands that run many independent rows (demo, bench; r2f.parallel)."""
    return typer.Option(None, "--jobs", metavar="N", help="Rows run side by side in worker processes (default: "
                                                          "the free cores divided by the threads each row uses; "
                                                          "R2F_JOBS also sets it). Numbers do not depend on it.")


def _bare_flag(param: TyperOption | TyperArgument | None) -> TyperOption | TyperArgument | None:
    """Show a boolean flag bare in --help: typer's rich help prints its type, ``<bool>``, as if it took a value."""
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""
    return param


class _BareFlags:
    """Mixin for r2f's click commands and group: boolean options read as flags in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _bare_flag(param)

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        return _bare_flag(super().get_help_option(ctx))


class R2FGroup(_BareFlags, TyperGroup):
    """The ``r2f`` group."""


class R2FCommand(_BareFlags, TyperCommand):
    """An ``r2f`` command: its --help also lists ``--config FILE``, which :func:`main` reads before parsing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_option = _config_option()

    def get_params(self, ctx: typer.Context) -> list[TyperOption | TyperArgument]:
        params = super().get_params(ctx)  # the command's own, then --help
        n = len(self.params)
        return [*params[:n], self.config_option, *params[n:]]


class _R2FTyper(typer.Typer):
    """A Typer whose commands are :class:`R2FCommand` unless told otherwise."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any):
        return super().command(name, cls=cls or R2FCommand, **kwargs)


def _apply_config(ctx: typer.Context, value: Path | None) -> None:
    """--config reached the parser: the command was called without :func:`main` (e.g. typer's CliRunner on
    :data:`app`), which otherwise takes it off the command line first. The file's values become defaults."""
    if value is not None:
        config = _read_config(Path(value))
        _check_config_keys(ctx.command, config, str(value))
        ctx.default_map = {**(ctx.default_map or {}), **config}


def _config_option() -> TyperOption:
    """``--config FILE`` built by typer itself (it is not a parameter of the command functions)."""
    builder = typer.Typer()

    @builder.command()
    def _builder(config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help=CONFIG_HELP,
                                                       is_eager=True, expose_value=False,
                                                       callback=_apply_config)) -> None:
        """Never run: only its parameter is used."""

    return typer.main.get_command(builder).params[0]


app = _R2FTyper(
    name="r2f",
    cls=R2FGroup,
    help="Recover-to-Forget: efficient LLM unlearning from LoRA probe gradients. "
    "Every command also accepts --config FILE.yaml whose keys are the command's option names.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command_group(name: str, help: str) -> typer.Typer:
    """A sub-command group of ``r2f`` (``r2f ledger init``): its commands are :class:`R2FCommand` too."""
    group = _R2FTyper(name=name, cls=R2FGroup, help=help, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


def _print_version(value: bool) -> None:
    if value:
        from r2f import __version__

        typer.echo(f"r2f {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print r2f's version and exit."),
          verbose: bool = typer.Option(False, "--verbose",
                                       help="Keep third-party warnings, progress bars and log lines (quiet by "
                                            "default; accepted after any command too).")) -> None:
    pass


_loaded = False
#: Commands that split their work over the ranks of a torchrun / accelerate launch (docs/distributed.md).
DATA_PARALLEL_COMMANDS = ("unlearn", "eval", "train-decoder")


def _load_commands() -> None:
    global _loaded
    if _loaded:
        return
    import r2f.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"r2f.commands.{info.name}")
    _loaded = True


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


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    from r2f.io import read_text

    if not path.is_file():
        raise R2FInputError("config file not found", source=str(path))
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise R2FInputError(f"invalid YAML: {getattr(exc, 'problem', exc)}", source=where) from None
    if not isinstance(data, dict):
        raise R2FInputError("config must be a mapping of option names to values", source=str(path))
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def _check_config_keys(cmd: TyperCommand, config: dict[str, Any], path: str | None, name: str | None = None) -> None:
    """An unknown key in --config is bad input (it used to be ignored silently). ``name``: the command as typed
    (``ledger apply``), when it is not ``cmd.name``."""
    known = {p.name for p in cmd.params if p.name}
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        raise R2FInputError(f"unknown option(s) {', '.join(unknown)} for 'r2f {name or cmd.name}' "
                            f"(valid: {', '.join(sorted(known))})", source=path or "--config")


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
    import shlex

    from r2f.ledger import interrupted_message

    ledger_line = interrupted_message(argv)  # r2f ledger apply keeps its run inside the ledger, not in an --out
    if ledger_line is not None:
        return ledger_line
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
        from r2f import distributed

        if command not in DATA_PARALLEL_COMMANDS and int(os.environ.get("RANK", "0")) != 0:
            return  # under torchrun, commands that are not data-parallel run once, on rank 0, as one process
        # torchrun / accelerate launch (WORLD_SIZE > 1): one process group for the whole command
        if command in DATA_PARALLEL_COMMANDS:
            distributed.init_from_env()
        try:
            app(args=argv, prog_name="r2f", default_map=default_map, standalone_mode=True)
        except SystemExit as exc:
            if exc.code in (0, None):
                distributed.teardown()
            elif exc.code == 130 and distributed.is_main():  # Ctrl-C (typer exits 130 without a word)
                print(_interrupted(given), file=sys.stderr)
            raise
        except KeyboardInterrupt:
            if distributed.is_main():
                print(_interrupted(given), file=sys.stderr)
            sys.exit(130)
        else:
            distributed.teardown()
    except R2FInputError as exc:
        print("r2f: error: " + " ".join(str(exc).splitlines()), file=sys.stderr)  # always one line
        sys.exit(2)
    except R2FNumericalError as exc:  # not bad input: the run diverged (NaN/Inf) beyond --max-failures
        print("r2f: error: numerical failure: " + " ".join(str(exc).splitlines()), file=sys.stderr)
        sys.exit(3)
