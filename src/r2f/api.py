"""``r2f.train_decoder`` and ``r2f.evaluate``: ``r2f train-decoder`` and ``r2f eval`` as functions.

They take the commands' options as keyword arguments of the same names (``--batch-size`` as ``batch_size``)
and defaults, and check them as the CLI does (the commands call them), over the lower-level
:func:`r2f.decoders.train_decoder` and :func:`r2f.eval.evaluate`, whose Python names differ (``forget_split``,
``num_threads``). ``r2f.unlearn`` needs no such layer: it is :func:`r2f.methods.unlearn` itself. Bad input raises
:class:`r2f.errors.R2FInputError` naming the CLI flag, e.g. ``--retain-split``. Heavy modules (torch,
transformers) are imported on the first call, so ``import r2f`` stays cheap: the function-level imports below are
those (``import r2f`` imports this module, and the CLI must start without torch: tests/test_imports.py).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from r2f.errors import R2FInputError
from r2f.eval_spec import BENCHES, EvalSpec  # noqa: F401  (BENCHES: what --bench takes, offered here too)
from r2f.io import write_json_atomic

if TYPE_CHECKING:
    import torch

    from r2f.decoders.learned import LearnedDecoder


def train_decoder(
    proxy: str | os.PathLike | tuple | list,
    data: str | os.PathLike,
    rank: int = 16,
    out: str | os.PathLike | None = None,
    *,
    views: int = 4,
    seed: int = 0,
    rank_a: int = 0,
    batch_items: int = 4,
    probe_seeds: int = 2,
    steps: int = 1500,
    access: str = "batch",
    long_answers: bool = True,
    overwrite: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    threads: int | None = None,
    set_default: bool = True,
) -> LearnedDecoder:
    """Train the learned R2F gradient decoder on ``proxy`` with the world ``data`` (``r2f train-decoder``).

    ``proxy``: a model directory or name, or a ``(model, tokenizer)`` pair, or a list of these (a ladder of proxy
    shapes whose pairs are pooled). ``rank_a=0`` means ``2 * rank``.
    With ``out`` (a ``.safetensors`` path; a ``.json`` sidecar is written next to it) the decoder is saved
    and becomes the default of ``unlearn(..., method="r2f")`` (unless ``set_default=False``: a side decoder of an
    experiment, say); it is returned either way. ``access`` (lora |
    stats | batch) is what the decoder may read besides the probe gradients (docs/decoder.md); ``long_answers``
    adds the proxy authors' biographies to the training pairs when the world has them. ``threads``: torch's
    intra-op threads (default: r2f.threads' policy; recorded in the decoder's metadata).
    Example: ``r2f.train_decoder("runs/proxy", "world", out="decoder.safetensors")``.
    """
    # torch-heavy: imported on the first call (module docstring)
    from r2f.decoders.train import train_decoder as fit
    from r2f.models.loading import model_policy
    from r2f.threads import check_threads, requested_threads

    if out is not None:
        out = Path(out)
        if out.suffix != ".safetensors":
            raise R2FInputError("decoder file must end in .safetensors", source=str(out))
        if out.exists() and not overwrite:
            raise R2FInputError("--out exists; pass --overwrite to replace it", source=str(out))
    if not Path(data).is_dir():
        raise R2FInputError("data directory not found", source=str(data))
    check_threads(threads)
    with model_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), requested_threads(threads):
        return fit(proxy, data, rank=rank, out=out, views=views, seed=seed, rank_a=rank_a or None,
                   batch_items=batch_items, probe_seeds=probe_seeds, steps=steps, access=access,
                   long_answers=long_answers, set_default=set_default)


def evaluate(
    model: str | os.PathLike | tuple | torch.nn.Module,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    retain_model: str | os.PathLike | tuple | torch.nn.Module | None = None,
    retain_log: str | os.PathLike | dict | None = None,
    forget: str | None = None,
    retain_split: str | None = None,
    relearn: int = 0,
    relearn_lr: float = 1e-4,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    max_items: int | None = None,
    threads: int | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    tokenizer: Any = None,
    retain_tokenizer: Any = None,
    metrics: Iterable[str] | None = None,
    bench: str = "world",
    documents: str | None = None,
) -> dict:
    """Evaluate ``model`` on the ``forget`` split of ``data`` (``r2f eval``); returns the eval.json dict.

    With ``out`` (a file path) the dict is also written there as JSON. ``model``/``retain_model``: a model
    directory, ``"smollm2"``, a ``(model, tokenizer)`` pair, or a model with ``tokenizer=``/``retain_tokenizer=``.
    Give at most one of ``retain_model`` and ``retain_log`` (its eval.json, or OpenUnlearning's TOFU_EVAL.json);
    without either, ``forget_quality`` is ``None``. ``forget`` defaults to ``forget10``; ``retain_split`` to its
    complement (``forget05`` → ``retain95``). ``metrics`` (Python only) picks names from :data:`r2f.eval.METRICS`.
    ``threads``: torch's intra-op threads (default: r2f.threads' policy; recorded in ``meta.threads``).
    ``bench="realfacts"`` evaluates real-world knowledge instead (docs/realfacts.md): the shipped benchmark, or the
    directory ``data``; no retain oracle, split options or relearning. ``max_new_tokens`` defaults to 200 on the
    world and 32 on realfacts. ``documents``: a documents split (``forget10`` → ``data/documents/forget10.jsonl``) or
    file whose document metrics (verbatim extraction, loss MIA; docs/metrics.md) are added (world only).
    Example: ``r2f.evaluate("runs/npo", "world", forget="forget05", out="runs/npo/eval.json")["summary"]``.
    """
    # torch-heavy: imported on the first call (module docstring)
    from r2f.distributed import is_main
    from r2f.eval import evaluate as run_suite
    from r2f.models.loading import model_policy
    from r2f.threads import thread_choice

    # the settings, checked once (bench, world-only options, counts; errors name the flags): the suite takes them
    spec = EvalSpec(bench=bench, forget=forget, retain_split=retain_split, metrics=metrics, relearn=relearn,
                    relearn_lr=relearn_lr, batch_size=batch_size, max_new_tokens=max_new_tokens, max_items=max_items,
                    threads=threads, documents=documents)
    if retain_model is not None and retain_log is not None:
        raise R2FInputError("give either --retain-model or --retain-log, not both", source="--retain-log")
    if out is not None and Path(out).is_dir():
        raise R2FInputError("--out must be a file path (eval.json), not a directory", source=str(out))
    if spec.bench == "realfacts":
        _check_realfacts_inputs(data, retain_model=retain_model, retain_log=retain_log)
    else:
        if data is None:
            raise R2FInputError("missing: the world / TOFU data directory", source="--data")
        if not Path(data).is_dir():
            raise R2FInputError("data directory not found", source=str(data))
        if isinstance(retain_log, (str, os.PathLike)) and not Path(retain_log).is_file():
            raise R2FInputError("retain log not found", source=str(retain_log))
    # under torchrun every rank evaluates its share of the batches (r2f.distributed); rank 0 writes
    with model_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code):
        # chosen here (the suite would choose the same) so that eval.json can say which count ran and why
        threads_used = thread_choice(model if tokenizer is None else (model, tokenizer), spec.threads)
        spec = replace(spec, threads=threads_used.threads)
        if spec.bench == "realfacts":
            from r2f.eval.realfacts import evaluate_realfacts  # torch-heavy, and only for this bench

            result = evaluate_realfacts(model, tokenizer=tokenizer, data=data, spec=spec)
        else:
            result = run_suite(model, data, tokenizer=tokenizer, retain_model=retain_model,
                               retain_tokenizer=retain_tokenizer, retain_log=retain_log, spec=spec)
    result.setdefault("meta", {})["threads"] = threads_used.to_dict()
    if out is not None and is_main():
        write_json_atomic(out, result)
    return result


def _check_realfacts_inputs(data, *, retain_model, retain_log) -> None:
    """``--bench realfacts`` has no retain oracle (its world-only settings are EvalSpec's to refuse)."""
    for flag, given in {"--retain-model": retain_model is not None, "--retain-log": retain_log is not None}.items():
        if given:
            raise R2FInputError("only for --bench world (realfacts has fixed splits and no retain oracle)", source=flag)
    if data is not None and not Path(data).is_dir():
        raise R2FInputError("realfacts directory not found", source=str(data))
