"""``r2f demo``: the main job, end to end on the embedded world (or on SmolLM2 as shipped: ``--bench realfacts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from r2f.commands._app import app, jobs_option, threads_option


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Directory for runs and report.{json,md,html}."),
    quick: bool = typer.Option(False, "--quick", help="Tiny target and a shorter budget (about 2 minutes)."),
    target: str = typer.Option("small", help="Target model: small (default) or smollm2 (the real SmolLM2-135M, "
                                                "fine-tuned on the world first; about 75 minutes cold on 2 CPU cores); "
                                                "smollm2-base (SmolLM2 as shipped) with --bench realfacts."),
    bench: str = typer.Option("world", "--bench", help="What is forgotten: world (the embedded world's forget10) or "
                                                       "realfacts (real facts SmolLM2 knows; --target smollm2-base)."),
    seed: int = typer.Option(0, help="Seed for the world, the models and every method."),
    steps: int = typer.Option(None, help="Unlearning step budget, the same for every method."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear a non-empty --out first (refused otherwise)."),
    threads: Optional[int] = threads_option(),
    jobs: Optional[int] = jobs_option(),
) -> None:
    """World → proxy, target and retain oracle → decoder → every unlearning method → evaluation → report."""
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.demo import DemoConfig, console_table, run_demo
    from r2f.threads import requested_threads

    console = Console(width=max(110, Console().width))
    cfg = DemoConfig(quick=quick, target=target, bench=bench, seed=seed, steps=steps, jobs=jobs)
    with requested_threads(threads):  # every stage (training, decoder, unlearning, evaluation) uses N threads
        report = run_demo(out, cfg, overwrite=overwrite, log=lambda m: console.print(m, highlight=False, markup=False))
    console.print(console_table(report))
    console.print(report["headline"]["text"], highlight=False, markup=False)
    console.print(f"report: {out / 'report.html'}")
