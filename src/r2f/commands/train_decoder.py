"""``r2f train-decoder``: train the learned R2F gradient decoder on a proxy model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

import r2f
from r2f.commands._app import app, threads_option


@app.command("train-decoder")
def train_decoder_cmd(
    proxy: list[str] = typer.Option(..., "--proxy", help="Proxy model directory (or name) whose exact gradients are "
                                    "cheap; repeat it for a ladder of proxies of other shapes (e.g. proxy and proxy_wide)."),
    data: Path = typer.Option(..., "--data", help="World directory; only its proxy.jsonl (and world_facts for Σ) are used."),
    rank: int = typer.Option(16, "--rank", help="Probe rank r_B (columns of B); r_A defaults to 2·rank."),
    out: Path = typer.Option(..., "--out", help="Output decoder file (.safetensors; a .json sidecar is written next to it)."),
    views: int = typer.Option(4, "--views", help="Question views per item (original + paraphrases)."),
    seed: int = typer.Option(0, "--seed", help="Probe seed and training seed."),
    rank_a: int = typer.Option(0, "--rank-a", help="Rows of A (0 = 2·rank)."),
    batch_items: int = typer.Option(4, "--batch-items", help="Items per gradient (as one unlearning step)."),
    probe_seeds: int = typer.Option(2, "--probe-seeds", help="Independent probe draws used for training pairs."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps of the coefficient network."),
    access: str = typer.Option("batch", "--access", help="What the decoder may read besides the LoRA gradients: "
                               "lora (nothing: the black-box case), stats (Σ of the target on generic text), "
                               "batch (also the batch's own activations)."),
    long_answers: bool = typer.Option(True, "--long-answers/--no-long-answers",
                                      help="Also train on the proxy authors' biographies (documents/proxy.jsonl), "
                                           "long answers, when the world has them."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    set_default: bool = typer.Option(True, "--set-default/--no-set-default",
                                     help="Make --out the default learned decoder of this machine (--decoder "
                                          "learned, R2F's default); --no-set-default leaves the default as it is."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Also load pickle weights (.bin/.pt), which can run code when loaded."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run Python code shipped inside a model directory (off by default)."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Train the learned gradient decoder on proxy pairs (probe gradients, exact gradient)."""
    dec = r2f.train_decoder(proxy, data, rank=rank, out=out, views=views, seed=seed, rank_a=rank_a,
                            batch_items=batch_items, probe_seeds=probe_seeds, steps=steps, access=access, long_answers=long_answers, overwrite=overwrite,
                            set_default=set_default, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, threads=threads)
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.distributed import is_main

    if not is_main():
        return
    held = dec.meta.get("fidelity_heldout") or {}
    typer.echo(f"wrote decoder to {out} (access {dec.access}, correction on {dec.base}: "
               f"{dec.meta.get('correction')}); held-out cos: " + json.dumps({k: round(v, 4) for k, v in held.items()}))
