"""``r2f fidelity``: how well decoders reconstruct a target's exact gradients, and what the probe costs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from r2f.commands._app import app, threads_option
from r2f.errors import R2FInputError
from r2f.io import write_json_atomic


@app.command("fidelity")
def fidelity_cmd(
    decoder: str = typer.Option(..., "--decoder", help="Learned decoder file (reported as 'learned')."),
    model: str = typer.Option(..., "--model", help="Target model directory (or name)."),
    data: Path = typer.Option(..., "--data", help="World directory (forget split + world_facts for Σ)."),
    out: Path = typer.Option(..., "--out", help="Output fidelity.json."),
    split: str = typer.Option("forget10", "--split", help="Items to measure on."),
    views: int = typer.Option(4, "--views", help="Question views per item."),
    batch_items: int = typer.Option(4, "--batch-items", help="Items per gradient (as one unlearning step)."),
    max_batches: int = typer.Option(0, "--max-batches", help="Limit the number of item batches (0 = all)."),
    probe_seed: int = typer.Option(-1, "--probe-seed", help="Probe seed on the target (-1: a seed unseen in training)."),
    cost: bool = typer.Option(True, "--cost/--no-cost", help="Also time probe vs exact gradients side by side."),
    access: str = typer.Option("", "--access", help="Access mode to tabulate (lora|stats|batch): every closed-form "
                               "candidate of the mode next to the learned decoder (default: the decoder's mode)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Also load pickle weights (.bin/.pt), which can run code when loaded."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run Python code shipped inside a model directory (off by default)."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Per-decoder cosine / unobserved-block cosine / relative error against exact gradients (+ cost)."""
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.decoders import load_decoder, measure_fidelity
    from r2f.gradients import ProbeConfig
    from r2f.models.loading import model_policy
    from r2f.threads import requested_threads

    if out.exists() and not overwrite:
        raise R2FInputError("--out exists; pass --overwrite to replace it", source=str(out))
    if not data.is_dir():
        raise R2FInputError("data directory not found", source=str(data))
    dec = load_decoder(decoder)
    probe = None
    meta = getattr(dec, "meta", None)
    if meta and probe_seed >= 0:
        p = meta["probe"]
        probe = ProbeConfig(rank=p["rank"], rank_a=p["rank_a"], seed=probe_seed, target_modules=p["target_modules"], scale=p["scale"])
    with model_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), requested_threads(threads):
        res = measure_fidelity(dec, model, data, split=split, probe=probe, views=views, batch_items=batch_items,
                               max_batches=max_batches or None, cost=cost, access=access or None)
    write_json_atomic(out, res)
    line = ", ".join(f"{k} cos {v['cos_mean']:.3f}" for k, v in res["decoders"].items() if v["cos_mean"] is not None)
    typer.echo(f"wrote {out}: {line}")
    if res.get("ladder"):  # which proxies the learned decoder was trained on (its shape features' range)
        names = ", ".join(Path(str(m.get("name", "?"))).name for m in res["ladder"])
        typer.echo(f"learned decoder: access {meta.get('access', 'batch')}, trained on {len(res['ladder'])} "
                   f"prox{'y' if len(res['ladder']) == 1 else 'ies'} ({names})")
