#!/usr/bin/env python
"""Write docs/cli.md from the CLI's own help texts, and docs/method-options.md from each registered method's
configuration class (run after changing a command's or a method's options).

    .venv/bin/python scripts/cli_docs.py            # rewrite both pages
    .venv/bin/python scripts/cli_docs.py --check    # exit 1 when either page is out of date
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import click
import typer

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
METHOD_DOC = DOC.with_name("method-options.md")
METHOD_HEADER = """# Method options

Generated from each registered method's configuration class (`config_class`, a frozen dataclass of
`r2f.typed.option` fields) by `scripts/cli_docs.py`; do not edit by hand. Pass an option to `r2f unlearn` as
`-o key=value` (or to `r2f.unlearn` as a keyword); a value outside a listed choice, or an unknown key, is exit 2
naming it. `r2f methods NAME` prints the same from the installed version; [methods.md](methods.md) has the
reasoning and the measurements behind the defaults.
"""
HEADER = """# Command-line reference

Generated from the commands' own `--help` by `scripts/cli_docs.py`; do not edit by hand.
Every command also accepts `--config FILE.yaml` (keys are option names, command-line flags win), exits 0 on
success, 2 on bad input (one line naming the file, field or line at fault) and 3 when training diverges.
`unlearn`, `train-decoder` and `eval` are also Python functions taking these options as keyword arguments
([Python API](api.md)).

**Rows side by side.** `demo` and `bench` run their independent rows (a method's run and its evaluation; a bench
trial) in worker processes, `--jobs N` at a time (default: the free cores divided by the threads each row uses,
so two at a time for `small` on an idle 2-core machine and one for a large target; `R2F_JOBS` also sets it).
Each row is seed-fixed, so the numbers do not depend on it; only the wall time does (`r2f.parallel`).

**Threads.** Every command that runs a model (`train`, `train-decoder`, `fidelity`, `unlearn`, `eval`, `demo`,
`bench`, `ledger apply`) picks torch's intra-op thread count for each stage (`r2f.threads.choose_threads`): `--threads N` when
given; else `OMP_NUM_THREADS` when set; else 1 thread for a model under 50M parameters (its matrices gain nothing
from threads); else the cores this process may run on (its CPU affinity) minus the load other processes put on
them (the 1-minute load average less this process's own share), at least 1 and at most torch's default. Why:
OpenMP threads spin-wait for each other, so next to another CPU job a run with one thread per core slows down far
more than in proportion (issue 17: 6 R2F steps on `tiny`, 2-core machine, one busy process: 54–59 s with torch's
default threads, 3.5 s with one). The count and the rule that chose it are recorded: `threads` in an unlearning
run's manifest.json, in a decoder's and a trained model's metadata and in fidelity.json, `meta.threads` in
eval.json. `world` and `report` run no model and take no `--threads`. `benchmarks/threads_busy.py` measures the
effect next to a competing CPU job.
"""


def _option_row(param: click.Parameter) -> str:
    names = " / ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts)) if param.opts else f"`{param.name}`"
    if isinstance(param, click.Argument):
        names = f"`{param.name.upper()}`" + ("…" if param.nargs == -1 else "")
    help_text = " ".join((getattr(param, "help", None) or "").split()).replace("|", "\\|")
    default = param.default
    if param.required:
        shown = "required"
    elif default is None or default is False or default in ((), []) or callable(default):
        shown = ""
    else:
        shown = f"`{default}`"
    return f"| {names} | {help_text} | {shown} |"


def render() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from r2f.cli import _load_commands, app

    _load_commands()
    group = typer.main.get_command(app)
    parts = [HEADER]
    named = []  # (name as typed, command); a group's sub-commands follow it (r2f ledger init, ...)
    for name in sorted(group.commands):
        cmd = group.commands[name]
        subs = getattr(cmd, "commands", None)
        named += [(f"{name} {sub}", subs[sub]) for sub in sorted(subs)] if subs else [(name, cmd)]
    for name, cmd in named:
        doc = " ".join((cmd.help or "").split())
        parts.append(f"\n## `r2f {name}`\n\n{doc}\n\n| option | meaning | default |\n|---|---|---|\n")
        ctx = typer.Context(cmd)
        # as --help lists them: --config included, --help left out
        rows = [_option_row(p) for p in cmd.get_params(ctx) if p is not cmd.get_help_option(ctx)]
        parts.append("\n".join(rows) + "\n")
    return "".join(parts)


def _cell(value: object) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def render_methods() -> str:
    """One section per registered method: what it declares, then a row per option of its configuration class."""
    from r2f.methods import METHODS
    from r2f.methods.base import describe_method

    parts = [METHOD_HEADER]
    for name in sorted(METHODS):
        d = describe_method(METHODS[name])
        needs = [w for w, on in (("retain data", d["needs_retain"]), ("a decoder", d["uses_decoder"])) if on]
        parts.append(f"\n## `{name}`\n\n{_cell(d['doc'])}\n\nNeeds {', '.join(needs) or 'nothing more'}; optimizer "
                     f"{d['optimizer'] or 'none (its own update)'}; default `--lr` {d['default_lr']:g}.\n")
        if d["options"]:
            parts.append("\n| option | type | default | meaning |\n|---|---|---|---|\n")
            parts.append("\n".join(f"| `{o['name']}` | {_cell(o['type'] or '')} | `{_cell(json.dumps(o['default'], default=str))}` "
                                   f"| {_cell(o['help'])} |" for o in d["options"]) + "\n")
    return "".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = ap.parse_args()
    pages = {DOC: render(), METHOD_DOC: render_methods()}
    if args.check:
        stale = [p for p, text in pages.items() if (p.read_text(encoding="utf-8") if p.is_file() else "") != text]
        for p in stale:
            print(f"{p} is out of date: run scripts/cli_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for p, text in pages.items():
        p.write_text(text, encoding="utf-8")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
