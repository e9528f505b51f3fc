"""What every ``r2f`` command module shares: the :data:`app` it registers on, the command classes (``--config``
in each command's help, bare boolean flags), the common options, and reading ``--config`` files.

The command modules import this module, never :mod:`r2f.cli` (which imports them): no import cycle. A command
module that keeps work on Ctrl-C registers its one-line message with :func:`on_interrupt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from r2f import __version__
from r2f.errors import R2FInputError
from r2f.eval_spec import flag
from r2f.io import read_text

CONFIG_HELP = ("YAML file of defaults keyed by this command's option names (without the --); flags on the "
               "command line win; an unknown key is an error.")
THREADS_HELP = ("torch intra-op threads (default: OMP_NUM_THREADS when set, else 1 for models under 50M parameters, "
                "else the cores other processes leave free; docs/cli.md).")


def record_option(record: Any, name: str) -> Any:
    """The option of a field of a typed record (:class:`r2f.typed.TypedRecord`: EvalSpec, DemoConfig): its flag,
    default and help are the record's."""
    return typer.Option(record.defaults()[name], flag(name), help=record.help(name))


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
        typer.echo(f"r2f {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print r2f's version and exit."),
          verbose: bool = typer.Option(False, "--verbose",
                                       help="Keep third-party warnings, progress bars and log lines (quiet by "
                                            "default; accepted after any command too).")) -> None:
    pass


def _read_config(path: Path) -> dict[str, Any]:
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



#: Ctrl-C lines of commands that keep work somewhere else than ``--out`` (``r2f ledger apply``): each returns its
#: line for the command line it is given, or None when the line is not its command's.
INTERRUPT_LINES: list[Callable[[list[str]], Optional[str]]] = []


def on_interrupt(line: Callable[[list[str]], Optional[str]]) -> Callable[[list[str]], Optional[str]]:
    """Register ``line(argv)`` as a command's Ctrl-C message (see :data:`INTERRUPT_LINES`)."""
    INTERRUPT_LINES.append(line)
    return line
