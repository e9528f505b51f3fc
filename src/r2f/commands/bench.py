"""``r2f bench``: the fair comparison protocol (same tuning budget per method, tune worlds ≠ report worlds)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from r2f.commands._app import app, jobs_option, threads_option


@app.command("bench")
def bench(
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Directory for the runs, bench.json and bench.md."),
    quick: bool = typer.Option(False, "--quick", help="Tiny target, 2 configurations per method, 1 tune seed and "
                                                      "the demo's quick step budget (under 15 minutes on 2 cores)."),
    tune_seeds: Optional[str] = typer.Option(None, "--tune-seeds", help="Worlds the configurations are chosen on, "
                                                                        "comma-separated (default 10,11; 10 with "
                                                                        "--quick)."),
    report_seeds: str = typer.Option("1,2,3", "--report-seeds", help="Worlds the chosen configurations are "
                                                                     "reported on (at least 3, none a tune seed)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated subset of the demo's methods "
                                                                  "(default all)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Unlearning step budget, the same for every run "
                                                              "(default the demo's: 30, 20 with --quick)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear a non-empty --out first (refused otherwise)."),
    threads: Optional[int] = threads_option(),
    jobs: Optional[int] = jobs_option(),
) -> None:
    """Tune every method on validation worlds with the same grid budget and one selection rule, then report the
    chosen configurations over the report worlds (docs/bench.md)."""
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.bench import SUMMARY_HEADER, BenchConfig, parse_seeds, run_bench, summary_rows
    from r2f.demo import DEMO_METHODS
    from r2f.threads import requested_threads

    cfg = BenchConfig(
        quick=quick,
        tune_seeds=parse_seeds(tune_seeds, "--tune-seeds") if tune_seeds is not None else None,
        report_seeds=parse_seeds(report_seeds, "--report-seeds"),
        methods=tuple(m.strip() for m in (methods or ",".join(DEMO_METHODS)).split(",") if m.strip()),
        steps=steps,
        jobs=jobs,
    )
    console = Console(width=max(130, Console().width))
    with requested_threads(threads):  # every stage of every trial uses N threads
        result = run_bench(out, cfg, overwrite=overwrite, log=lambda m: console.print(m, highlight=False, markup=False))
    p = result["protocol"]
    table = Table(title=f"r2f bench: {p['forget']} on target {p['target']}, report seeds "
                        f"{', '.join(map(str, p['report_seeds']))}",
                  caption=f"passing: FQ ≥ {p['pass']['forget_quality_min']:g} with MU ≥ "
                          f"{p['pass']['mu_ratio_min']:g}× the original's")
    for i, header in enumerate(SUMMARY_HEADER):
        table.add_column(header, justify="left" if i < 3 else "right", no_wrap=True)
    for row in summary_rows(result):
        table.add_row(*row)
    console.print(table)
    console.print(f"bench: {out / 'bench.md'} ({result['wall_s']:.0f}s)")
