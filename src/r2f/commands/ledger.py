"""``r2f ledger``: a tamper-evident ledger of deletion requests (init, apply, verify, show, report).

The logic is :mod:`r2f.ledger`; these commands parse options, print one line (or JSON) and set the exit code:
``verify`` exits 1 when the ledger fails a check (each problem on its own line, naming the entry), 2 on bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from r2f import ledger as lg
from r2f.commands._app import command_group, on_interrupt, threads_option
from r2f.commands.unlearn import _parse_options
from r2f.ledger import interrupted_message
from r2f.ledger import short_number as _num

ledger_app = command_group(
    "ledger",
    help="A tamper-evident ledger of deletion requests: each request a new model version, chained by hash "
         "(docs/ledger.md).")

LEDGER_ARG = typer.Argument(..., metavar="LEDGER", help="Ledger directory (made by r2f ledger init).")


@ledger_app.command("init")
def init_command(
    model: str = typer.Option(..., "--model", help="Source model directory (or 'smollm2'); only read, never "
                                                   "modified."),
    out: Path = typer.Option(..., "--out", help="Ledger directory to create (written atomically)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Start a ledger: record the source model's path, fingerprint and per-file sha256."""
    path = lg.init(model, out, overwrite=overwrite)
    rec = lg.read_init(path)
    typer.echo(f"ledger {path}: source {rec['source']['path']} fingerprint {rec['source']['fingerprint'][:16]}, "
               f"head {rec['hash'][:16]}")


@ledger_app.command("apply")
def apply_command(
    ledger: Path = LEDGER_ARG,
    forget: Path = typer.Option(..., "--forget", help="The deletion request: a forget file (JSON/JSONL, "
                                                      "TOFU-shaped); copied into the ledger."),
    method: str = typer.Option("r2f", "--method", help="Unlearning method (as r2f unlearn --method)."),
    retain: Optional[Path] = typer.Option(None, "--retain", help="Retain file for the method (as r2f unlearn)."),
    utility: list[Path] = typer.Option([], "--utility", help="File measured before and after (repeatable): "
                                                             "utility (retain authors, world facts) or a "
                                                             "reference such as holdout. Default: --retain."),
    decoder: Optional[str] = typer.Option(None, "--decoder", help="Decoder of a method that decodes gradients (as r2f "
                                                                       "unlearn)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Step budget (default: 10 epochs of the request)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate or R2F's step size (as r2f unlearn)."),
    views: Optional[int] = typer.Option(None, "--views", help="Question views per forget item."),
    seed: int = typer.Option(0, "--seed", help="Seed of batching, initialisation and every RNG."),
    batch_size: int = typer.Option(8, "--batch-size", help="Forget (and retain) items per step."),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps into LEDGER/pending (0: "
                                                           "never); an interrupted apply continues with --resume."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted apply (same request and options)."),
    restart: bool = typer.Option(False, "--restart", help="Discard an interrupted apply and start this one."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cpu)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option key=value (repeatable)."),
    max_failures: int = typer.Option(3, "--max-failures", help="NaN/Inf steps tolerated (as r2f unlearn)."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", help="Greedy answer length for the ROUGE "
                                                                     "measurements (r2f eval's default)."),
    eval_max_items: Optional[int] = typer.Option(None, "--eval-max-items", help="Measure only the first N items "
                                                                                "of each --utility file."),
    renew: bool = typer.Option(True, "--renew/--no-renew", help="Forget again, in the same run, the earlier "
                                                                 "requests the newest model version no longer keeps "
                                                                 "forgotten (by its entry's verdicts)."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Honour one deletion request: unlearn it from the newest model version into a new one, measure, and commit
    an entry chained to the previous one (nothing changes unless it all succeeds)."""
    entry = lg.apply(ledger, forget, method, retain=retain, utility=utility, decoder=decoder, steps=steps, lr=lr,
                     views=views, seed=seed, batch_size=batch_size, save_every=save_every, resume=resume,
                     restart=restart, device=device, max_failures=max_failures, threads=threads,
                     max_new_tokens=max_new_tokens, eval_max_items=eval_max_items, renew=renew,
                     **_parse_options(option))
    req = entry["verification"]["request"]
    line = (f"entry {entry['index']}: {method}, {entry['run']['steps_done']} steps, forget ROUGE-L "
            f"{_num(req['before']['rougeL_recall'])} -> {_num(req['after']['rougeL_recall'])}, NLL "
            f"{_num(req['before']['answer_nll'])} -> {_num(req['after']['answer_nll'])}")
    for row in entry["verification"]["utility"]:
        line += f", {row['name']} ROUGE-L {_num(row['before']['rougeL_recall'])} -> {_num(row['after']['rougeL_recall'])}"
    if entry.get("renewed"):
        line += f", forgot again: {lg.entries_text(entry['renewed'])}"
    typer.echo(f"{line} -> {Path(ledger) / entry['child']['path']}")
    # the entry is committed either way (it records what was done); the verdict is said where a script sees it
    if req.get("forgotten") is False:
        typer.echo(f"r2f: warning: entry {entry['index']}: this request is not forgotten: its answers' NLL "
                   f"{_num(req['after']['answer_nll'])} is below {_num(req['bar']['answer_nll'])}, the parent's NLL "
                   "of shuffled answers", err=True)
    if lg.relapsed_entries(entry["verification"]):
        typer.echo(f"r2f: warning: entry {entry['index']}: earlier requests whose answers are likelier again than "
                   f"wrong ones (NLL below the bar of their own entry): {lg.relapsed_text(entry['verification'])}",
                   err=True)


@ledger_app.command("verify")
def verify_command(ledger: Path = LEDGER_ARG) -> None:
    """Recompute every hash and fingerprint; exit 1 naming each entry whose record, request file or model
    version changed."""
    result = lg.verify(ledger)
    for note in result["notes"]:
        typer.echo(f"note: {note}", err=True)
    if not result["ok"]:
        for problem in result["problems"]:
            typer.echo(f"r2f: ledger {ledger}: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ledger {ledger}: ok, {result['entries']} entries, head {result['head']}")


@ledger_app.command("show")
def show_command(
    ledger: Path = LEDGER_ARG,
    as_json: bool = typer.Option(False, "--json", help="Print the entries as a JSON list, oldest first."),
) -> None:
    """List the entries, oldest first: request, method, parent and child fingerprints, model path."""
    rows = lg.show(ledger)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        req = (r.get("verification") or {}).get("request") or {}
        typer.echo(f"{r['index']:>3}  {r['time']}  {r['method']:<12} request {str(r['request_sha256'])[:12]} "
                   f"({r['request_items']} items{', ' + ', '.join(r['authors']) if r.get('authors') else ''})  "
                   f"{str(r['parent'])[:12]} -> {str(r['child'])[:12]}  forget ROUGE-L "
                   f"{_num((req.get('before') or {}).get('rougeL_recall'))} -> "
                   f"{_num((req.get('after') or {}).get('rougeL_recall'))}  forgotten {lg.verdict_text(req)}  "
                   f"forgot again: {lg.entries_text(r['renewed'])}  "
                   f"earlier not forgotten: {lg.relapsed_text(r.get('verification'))}  {r['path']}")
    typer.echo(f"head {lg.head(ledger)}")


@ledger_app.command("report")
def report_command(ledger: Path = LEDGER_ARG) -> None:
    """Write LEDGER/report.html: the entries and the forget and utility ROUGE curves over the requests."""
    typer.echo(f"wrote {lg.write_report(ledger)}")


@on_interrupt
def interrupted_line(argv: list[str]) -> str | None:
    """Ctrl-C during ``r2f ledger apply L ...`` (None for any other command line): the ledger the line names, read
    with the command's own parser, and what ``--resume`` continues (:func:`r2f.ledger.interrupted_message`)."""
    args = [a for a in argv if a != "--verbose"]
    if args[:2] != ["ledger", "apply"]:
        return None
    cmd = typer.main.get_command(ledger_app).commands["apply"]
    try:
        ledger = cmd.make_context("apply", list(args[2:]), resilient_parsing=True).params.get("ledger")
    except Exception:  # an unparsable line: nothing to name
        ledger = None
    return interrupted_message(ledger, args)
