"""``r2f eval``: the TOFU-style evaluation suite of one model, written as eval.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import r2f
from r2f.commands._app import app, record_option, threads_option
from r2f.eval_spec import EvalSpec

#: Headline numbers printed after an evaluation.
HEADLINE = ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "forget_Truth_Ratio", "privleak", "extraction_strength")
#: Headline numbers of ``--bench realfacts``.
REALFACTS_HEADLINE = ("forget_known", "neighbour_known", "general_known", "heldout_ppl", "forget_gen_match",
                      "mia_loss_forget_vs_neighbour")


@app.command("eval")
def eval_command(
    model: str = typer.Option(..., "--model", help="Model directory (or 'smollm2') to evaluate."),
    data: Optional[Path] = typer.Option(None, "--data", help="World / TOFU data directory (required for --bench world; "
                                                             "with --bench realfacts, a realfacts directory instead "
                                                             "of the shipped one)."),
    out: Path = typer.Option(..., "--out", help="Where to write eval.json."),
    bench: str = record_option(EvalSpec, "bench"),
    retain_model: Optional[str] = typer.Option(None, "--retain-model", help="Retain-oracle model directory (for forget_quality / privleak)."),
    retain_log: Optional[Path] = typer.Option(None, "--retain-log", help="eval.json of the retain oracle, instead of --retain-model."),
    forget: Optional[str] = record_option(EvalSpec, "forget"),
    retain_split: Optional[str] = record_option(EvalSpec, "retain_split"),
    documents: Optional[str] = record_option(EvalSpec, "documents"),
    relearn: int = record_option(EvalSpec, "relearn"),
    relearn_lr: float = record_option(EvalSpec, "relearn_lr"),
    batch_size: int = record_option(EvalSpec, "batch_size"),
    max_new_tokens: Optional[int] = record_option(EvalSpec, "max_new_tokens"),
    max_items: Optional[int] = record_option(EvalSpec, "max_items"),
    threads: Optional[int] = threads_option(),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Also load pickle weights (.bin/.pt), which can run code when loaded."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run Python code shipped inside a model directory (off by default)."),
) -> None:
    """Evaluate MODEL: TOFU metrics (forget quality, model utility, ROUGE, truth ratio), MIA, privleak, ES; with
    --bench realfacts, the real-world facts it still knows (forget, neighbours, general) and held-out perplexity."""
    # here, not at the top: the CLI imports this module at start-up without torch (r2f.commands)
    from r2f.distributed import is_main

    result = r2f.evaluate(model, data, out, retain_model=retain_model, retain_log=retain_log, forget=forget,
                          retain_split=retain_split, relearn=relearn, relearn_lr=relearn_lr, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, max_items=max_items, threads=threads,
                          allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, bench=bench,
                          documents=documents)
    if not is_main():
        return
    s = result["summary"]
    headline = REALFACTS_HEADLINE if bench == "realfacts" else HEADLINE
    headline += tuple(k for k in s if k.startswith("doc_"))
    parts = [f"{k}={s[k]:.4g}" for k in headline if isinstance(s.get(k), (int, float))]
    typer.echo(f"wrote {out} ({result['meta']['wall_s']:.1f}s): " + " ".join(parts))
    if result.get("relearn", {}).get("after"):
        b, a = result["relearn"]["before"], result["relearn"]["after"]
        typer.echo(f"relearn {relearn} steps: forget_Q_A_ROUGE {b['forget_Q_A_ROUGE']:.4g} -> {a['forget_Q_A_ROUGE']:.4g}")
