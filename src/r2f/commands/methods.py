"""``r2f methods``: the registered unlearning methods, what each declares and its options (``-o key=value``)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from r2f.commands._app import app


@app.command("methods")
def methods_command(
    name: Optional[str] = typer.Argument(None, metavar="[METHOD]", help="One method (default: every one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """List the unlearning methods (the registry, r2f.methods.METHODS): what each needs (retain data, a decoder),
    its optimizer and default learning rate, and its options for r2f unlearn -o key=value, with types, choices,
    defaults and help read from the method's own configuration class."""
    # here, not at the top: the registry imports torch, which the other commands' --help should not pay for
    from r2f.methods import METHODS
    from r2f.methods.base import check_method, describe_method

    if name is not None:
        check_method(name, source="METHOD")
    described = [describe_method(METHODS[n]) for n in ([name] if name else METHODS)]
    if as_json:
        typer.echo(json.dumps(described, indent=2, default=str))
        return
    for d in described:
        needs = [what for what, on in (("retain data", d["needs_retain"]), ("a decoder (--decoder)", d["uses_decoder"]))
                 if on]
        typer.echo(f"{d['name']}: {d['doc']}" if d["doc"] else d["name"])
        typer.echo(f"  needs {', '.join(needs) or 'nothing more'}; optimizer {d['optimizer'] or 'none (its own update)'}"
                   f"; default --lr {d['default_lr']:g}; --fsdp {'yes' if d['supports_fsdp'] else 'no'}")
        for o in d["options"]:
            kind = f": {o['type']}" if o["type"] else ""
            typer.echo(f"  -o {o['name']}={json.dumps(o['default'])}{kind}" + (f"  {o['help']}" if o["help"] else ""))
