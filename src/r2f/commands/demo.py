"""``r2f demo``: the main job, end to end on the embedded world (or on SmolLM2 as shipped: ``--bench realfacts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from r2f.commands._app import app, jobs_option, record_option, threads_option
from r2f.demo_spec import DemoConfig


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Directory for runs and report.{json,md,html}."),
    quick: bool = record_option(DemoConfig, "quick"),
    target: str = record_option(DemoConfig, "target"),
    bench: str = record_option(DemoConfig, "bench"),
    seed: int = record_option(DemoConfig, "seed"),
    steps: Optional[int] = record_option(DemoConfig, "steps"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear a non-empty --out first (refused otherwise)."),
    threads: Optional[int] = threads_option(),
    jobs: Optional[int] = jobs_option(),
) -> None:
    """World → proxy, target and retain oracle → decoder → every unlearning method → evaluation → report."""
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.demo import console_table, run_demo
    from r2f.threads import requested_threads

    console = Console(width=max(110, Console().width))
    cfg = DemoConfig(quick=quick, target=target, bench=bench, seed=seed, steps=steps, jobs=jobs)
    with requested_threads(threads):  # every stage (training, decoder, unlearning, evaluation) uses N threads
        report = run_demo(out, cfg, overwrite=overwrite, log=lambda m: console.print(m, highlight=False, markup=False))
    console.print(console_table(report))
    console.print(report["headline"]["text"], highlight=False, markup=False)
    console.print(f"report: {out / 'report.html'}")
