"""``r2f train``: train a ladder model (full, retain oracle, or proxy) on a world directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from r2f.commands._app import app, threads_option
from r2f.io import check_out_dir


@app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="World (or TOFU-shaped) data directory."),
    size: str = typer.Option("small", help="Ladder size: tiny, small, smollm2 (fine-tunes the pretrained "
                                           "SmolLM2-135M), or a proxy for decoder training (proxy authors only): "
                                           "proxy, proxy_wide (SmolLM2's widths), proxy_smoltok (SmolLM2's tokenizer)."),
    split: str = typer.Option("full", help="full (all training authors) or retain (forget split removed)."),
    forget: str = typer.Option("forget10", help="Forget split that --split retain leaves out."),
    out: Path = typer.Option(..., "--out", help="Output model directory (Hugging Face format)."),
    seed: int = typer.Option(0, help="Training seed."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Retrain even if the cache has this model."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
    threads: Optional[int] = threads_option(),
    documents: bool = typer.Option(False, "--documents",
                                   help="Also train on the same authors' biographies (the world's documents/ files) "
                                        "as documents; a model of its own (own cache key), never the default."),
) -> None:
    """Train a Llama-shaped model with its own BPE tokenizer on the world, or fine-tune SmolLM2 (cached by data +
    config hash)."""
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.models.training import train_model
    from r2f.threads import requested_threads

    check_out_dir(out, overwrite=overwrite, protect=[data])
    with requested_threads(threads):
        path = train_model(data, size=size, split=split, forget=forget, out=out, seed=seed, use_cache=not no_cache,
                           overwrite=overwrite, documents=documents)
    typer.echo(f"model ready at {path}")
