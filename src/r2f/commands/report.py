"""``r2f report``: report.json, report.md and a self-contained report.html from run directories."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import typer

from r2f.commands._app import app
from r2f.io import fresh_out_dir


@app.command("report")
def report_command(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories, each with any of eval.json, manifest.json, fidelity.json."),
    out: Path = typer.Option(Path("report"), "--out", help="Output directory (report.json, report.md, report.html, figures/)."),
    title: str = typer.Option("r2f unlearning report", "--title", help="Report title."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear a non-empty --out first (refused otherwise)."),
) -> None:
    """Tables and plots comparing runs: forget quality vs utility, per-step metrics, fidelity heatmap, cost."""
    # here, not at the top: matplotlib (r2f.commands)
    from r2f.report import build_report, load_runs

    runs = load_runs(run_dirs)  # validates every input before anything is written
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 writes
    fresh_out_dir(out, overwrite=overwrite, inputs=list(run_dirs))
    report = build_report(runs, out, title=title)
    typer.echo(f"wrote {out / 'report.html'} ({len(runs)} runs, {len(report['figures'])} figures)")
