"""``r2f unlearn``: run one unlearning method and write a Hugging Face model directory."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Optional

import typer

import r2f
from r2f.commands._app import app, threads_option
from r2f.errors import R2FInputError


def _parse_options(pairs: list[str]) -> dict:
    """``--option key=value`` (value parsed as JSON when possible: numbers, true/false, null)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise R2FInputError(f"expected key=value, got '{pair}'", source="--option")
        key, value = pair.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


@app.command("unlearn")
def unlearn_command(
    model: str = typer.Option(..., "--model", help="Model directory (or 'smollm2') to unlearn from; never modified."),
    forget: Path = typer.Option(..., "--forget", help="Forget split (JSON/JSONL, TOFU-shaped QA items or "
                                                     "{\"text\": ...} documents; or a .txt document)."),
    forget_kind: str = typer.Option("auto", "--forget-kind",
                                    help="What --forget holds: auto (documents when its records have 'text' and no "
                                         "'question', or a .txt file), qa, or documents (e.g. the world's "
                                         "documents/forget10.jsonl biographies). docs/world.md."),
    retain_kind: str = typer.Option("qa", "--retain-kind",
                                    help="What --retain holds: qa (default), documents or auto (as --forget-kind)."),
    chunk_tokens: int = typer.Option(128, "--chunk-tokens",
                                     help="Documents: tokens per unit (chunk) the run draws; views are the chunk, its "
                                          "paraphrases' chunks and the chunk after preceding text."),
    retain: Optional[Path] = typer.Option(None, "--retain", help="Retain split (JSON/JSONL). Optional: without it R2F's guard and a baseline's retain term use the target's own answers to the forget questions asked about made-up people (or, where no forget item names a subject, to generic questions)."),
    method: str = typer.Option("r2f", "--method",
                               help="Method name (docs/methods.md). The names are those the method registry "
                                    "holds (r2f.methods.METHODS); an unknown one is refused with the list."),
    decoder: Optional[str] = typer.Option(None, "--decoder",
                                          help="Decoder of a method that decodes gradients (refused for the others): a "
                                               "learned decoder file, 'learned' (default: the one r2f train-decoder "
                                               "wrote last) or a built-in name (lora, ls, sketch, sigma, exact)."),
    out: Path = typer.Option(..., "--out", help="Output model directory (written atomically)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Step budget (default: 10 epochs of the forget set)."),
    lr: Optional[float] = typer.Option(None, "--lr",
                                       help="Learning rate (methods trained with AdamW) or relative step size η "
                                            "(methods that update the weights themselves, e.g. r2f)."),
    views: Optional[int] = typer.Option(None, "--views",
                                        help="Question views per forget item (default: the method's own; r2f 4)."),
    seed: int = typer.Option(0, "--seed", help="Seed of batching, initialisation and every RNG."),
    batch_size: int = typer.Option(8, "--batch-size", help="Forget (and retain) items per step."),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps into OUT/checkpoints (0: never)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cpu)."),
    option: list[str] = typer.Option([], "--option", "-o",
                                     help="Method option key=value (repeatable; r2f methods METHOD lists them with "
                                          "types, defaults and help), e.g. -o guard=none -o beta=0.2."),
    max_failures: int = typer.Option(3, "--max-failures",
                                     help="A step giving NaN/Inf (loss, gradients or weights) is rolled back and "
                                          "retried with half the step size; the N-th such failure stops the run "
                                          "(exit 3, last good checkpoint kept)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Also load pickle weights (.bin/.pt), which can run code when loaded."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run Python code shipped inside a model directory (off by default)."),
    threads: Optional[int] = threads_option(),
    fsdp: bool = typer.Option(False, "--fsdp",
                              help="Under torchrun: shard the target's weights over the processes with FSDP2 "
                                   "(each holds 1/N of every layer; same result as one process). One process: "
                                   "no effect. See docs/distributed.md."),
) -> None:
    """Unlearn the --forget split from --model with one method; write the model, tokenizer and manifest.json."""
    options = _parse_options(option)
    # r2f.unlearn's own keyword arguments: a -o key among them would collide. -o decoder=... and -o views=... are
    # the flags given another way (both at once is ambiguous and refused); any other one is refused, naming it
    own = {n for n, p in inspect.signature(r2f.unlearn).parameters.items() if p.kind is not p.VAR_KEYWORD}
    flags = {"decoder": decoder, "views": views}
    for key in sorted(set(options) & (own - set(flags))):
        raise R2FInputError(f"'{key}' is the flag --{key.replace('_', '-')}, not a method option", source=f"-o {key}")
    for key in set(options) & set(flags):
        if flags[key] is not None:
            raise R2FInputError(f"given both --{key} and -o {key}=...; give one", source=f"-o {key}")
        flags[key] = options.pop(key)
    path = r2f.unlearn(model, forget, retain, method=method, out=out, steps=steps, seed=seed, lr=lr,
                       batch_size=batch_size, save_every=save_every, resume=resume, overwrite=overwrite,
                       device=device, max_failures=max_failures, allow_pickle=allow_pickle,
                       trust_remote_code=trust_remote_code, threads=threads, fsdp=fsdp, forget_kind=forget_kind,
                       retain_kind=retain_kind, chunk_tokens=chunk_tokens, **flags, **options)
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.distributed import is_main

    if not is_main():
        return  # rank 0 reports (all ranks computed the same run)
    manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    s, c = manifest["summary"], manifest["cost"]
    line = (f"{method}: {manifest['steps']['done']}/{manifest['steps']['budget']} steps, forget NLL "
            f"{s.get('forget_nll_start', float('nan')):.3f} -> {s.get('forget_nll_end', float('nan')):.3f}")
    if "retain_nll_start" in s:
        line += f", retain NLL {s['retain_nll_start']:.3f} -> {s['retain_nll_end']:.3f}"
    line += f", {c['wall_s']:.1f} s, peak {c['peak_mem_mb']:.0f} MB -> {path}"
    typer.echo(line)
