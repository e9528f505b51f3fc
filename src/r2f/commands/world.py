"""``r2f world``: write the embedded benchmark world."""

from __future__ import annotations

from pathlib import Path

import typer

from r2f.commands._app import app
from r2f.data.world import MAX_PARAPHRASES, WorldConfig, write_world
from r2f.errors import R2FInputError
from r2f.io import check_out_dir


@app.command("world")
def world(
    out: Path = typer.Option(..., "--out", help="Directory to write the JSONL splits and world.json into."),
    seed: int = typer.Option(0, help="Generator seed: the same seed gives byte-identical files."),
    authors: int = typer.Option(WorldConfig.authors, help="Authors in the target pool (forget + retain)."),
    holdout_authors: int = typer.Option(WorldConfig.holdout_authors, help="Authors never trained on."),
    proxy_authors: int = typer.Option(WorldConfig.proxy_authors, help="Authors of the proxy's own pool."),
    qa_per_author: int = typer.Option(WorldConfig.qa_per_author, help="Question-answer pairs per author (1-8)."),
    paraphrases: int = typer.Option(WorldConfig.n_paraphrases,
                                    help=f"Paraphrased questions per item (0-{MAX_PARAPHRASES}); views = 1 + this."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Write the TOFU-shaped fictitious-author world (forget01/05/10, retain99/95/90, holdout, world_facts, proxy)."""
    if authors < 1 or holdout_authors < 1 or proxy_authors < 1:
        raise R2FInputError("author counts must be at least 1", source="--authors")
    if not 1 <= qa_per_author <= 8:
        raise R2FInputError("must be between 1 and 8", source="--qa-per-author")
    if not 0 <= paraphrases <= MAX_PARAPHRASES:
        raise R2FInputError(f"must be between 0 and {MAX_PARAPHRASES}", source="--paraphrases")
    check_out_dir(out, overwrite=overwrite)
    cfg = WorldConfig(seed=seed, authors=authors, holdout_authors=holdout_authors, proxy_authors=proxy_authors,
                      qa_per_author=qa_per_author, n_paraphrases=paraphrases)
    try:
        write_world(out, cfg, overwrite=True)
    except ValueError as exc:
        raise R2FInputError(str(exc), source="--authors") from None
    typer.echo(f"wrote world (seed {seed}, {authors} authors) to {out}")
