"""``r2f.methods.unlearn``: validate, run the engine, write the unlearned model atomically."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import torch
from transformers import AutoTokenizer

from r2f import distributed as dist
from r2f.data.batching import CHUNK_TOKENS, DocUnit, document_units, is_documents
from r2f.data.loader import FORGET_KINDS, item_locations, read_records, record_type
from r2f.data.schema import Document, QAItem
from r2f.data.templates import template_for, untrainable
from r2f.decoders import Decoder, resolve_decoder
from r2f.distributed import DataParallel
from r2f.errors import R2FInputError
from r2f.fsdp import full_state_dict
from r2f.io import atomic_dir, check_out_dir, is_within, write_json_atomic
from r2f.methods.cost import CostMeter
from r2f.methods.base import METHODS, check_method, get_method, methods_that
from r2f.methods.engine import Engine, EngineConfig
from r2f.models.loading import load_model, model_fingerprint, model_policy, resolve_model_dir
from r2f.threads import check_threads, model_threads_for, requested_threads
from r2f.typed import check_choice

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
DEFAULT_BATCH_SIZE = 8
DEFAULT_EPOCHS = 10  # OpenUnlearning's TOFU recipe: 10 epochs over the forget set


def check_run_settings(*, steps: int | None, lr: float | None, batch_size: int, save_every: int,
                       max_failures: int) -> None:
    """The run's own settings, checked where :func:`unlearn` is called (None: the default, resolved later) and again
    by every :class:`RunSpec` made; R2FInputError naming the flag."""
    if batch_size < 1:
        raise R2FInputError("must be at least 1", source="--batch-size")
    if steps is not None and steps < 1:
        raise R2FInputError("must be at least 1", source="--steps")
    if save_every < 0:
        raise R2FInputError("must be >= 0", source="--save-every")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
        raise R2FInputError("must be an integer >= 1", source="--max-failures")
    if lr is not None and not (lr > 0 and lr == lr):
        raise R2FInputError("must be positive", source="--lr")


def check_chunk_tokens(chunk_tokens: Any) -> None:
    """Tokens per document unit (``--chunk-tokens``): an integer >= 1; R2FInputError naming the flag."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise R2FInputError("must be an integer >= 1", source="--chunk-tokens")


@dataclass(frozen=True)
class RunSpec:
    """An unlearning run, validated and built once in :func:`unlearn`, where the CLI, the Python API and the demo
    (and the ledger) hand over. The manifest's ``config`` and the run key that ``--resume`` compares are derived
    from it; the engine's configuration too."""

    method: str
    options: Mapping[str, Any]            # the method's options as recorded (an injected decoder by file or name)
    steps: int
    lr: float
    batch_size: int
    seed: int
    max_length: int | None
    optimizer: Mapping[str, Any] | None   # the optimizer's settings when the method trains with one
    # how the run is carried out (not in the run key: a resumed run may change them)
    save_every: int = 0
    max_failures: int = 3
    fsdp: bool = False
    documents: Mapping[str, Any] | None = None  # forget documents: how they were cut into units (chunk_tokens)

    def __post_init__(self) -> None:
        check_run_settings(steps=self.steps, lr=self.lr, batch_size=self.batch_size, save_every=self.save_every,
                           max_failures=self.max_failures)
        if self.documents is not None:
            check_chunk_tokens(self.documents.get("chunk_tokens"))

    @classmethod
    def build(cls, meth, method: str, recorded: dict[str, Any], n_forget: int, *, steps: int | None, lr: float | None,
              batch_size: int, seed: int, max_length: int | None, save_every: int, max_failures: int,
              fsdp: bool, documents: Mapping[str, Any] | None = None) -> "RunSpec":
        per_epoch = -(-n_forget // min(batch_size, n_forget))
        optimizer = None
        if meth.optimizer == "adamw":
            optimizer = {"name": meth.optimizer, "betas": [0.9, 0.999], "eps": 1e-8,
                         "weight_decay": EngineConfig.weight_decay, "schedule": "linear",
                         "warmup_ratio": EngineConfig.warmup_ratio, "max_grad_norm": EngineConfig.max_grad_norm}
        return cls(method=method, options=MappingProxyType(dict(recorded)),
                   steps=steps if steps is not None else DEFAULT_EPOCHS * per_epoch,
                   lr=lr if lr is not None else meth.default_lr, batch_size=batch_size, seed=seed,
                   max_length=max_length, optimizer=MappingProxyType(optimizer) if optimizer else None,
                   save_every=save_every, max_failures=max_failures, fsdp=fsdp,
                   documents=MappingProxyType(dict(documents)) if documents else None)

    def config(self) -> dict[str, Any]:
        """The manifest's ``config``."""
        out = {"method": self.method, "options": dict(self.options), "steps": self.steps, "lr": self.lr,
               "batch_size": self.batch_size, "seed": self.seed, "max_length": self.max_length}
        if self.optimizer is not None:
            out["optimizer"] = dict(self.optimizer)
        if self.documents is not None:  # only for documents: a QA run's config (and run key) is as it was
            out["documents"] = dict(self.documents)
        return out

    def run_key(self, forget_sha256: str, retain_sha256: str | None, source_fingerprint: str) -> dict[str, Any]:
        """What must match for ``--resume`` to continue a run: the config, the data and the source model."""
        return {**self.config(), "forget_sha256": forget_sha256, "retain_sha256": retain_sha256,
                "source_fingerprint": source_fingerprint}

    def engine_config(self) -> EngineConfig:
        return EngineConfig(steps=self.steps, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                            save_every=self.save_every, max_length=self.max_length, max_failures=self.max_failures,
                            fsdp=self.fsdp, **({"chunk_tokens": int(self.documents["chunk_tokens"])}
                                               if self.documents else {}))


@dataclass(frozen=True)
class RunInputs:
    """What a run reads, checked by :func:`unlearn`: the source model (a directory, or an in-memory model with its
    tokenizer) and the forget and retain items with their records (path, sha256, count) for the manifest."""

    model: Any                            # as given: a directory, "smollm2" or an in-memory model
    src_dir: Path | None                  # the resolved model directory (None: in memory)
    tokenizer: Any                        # an in-memory model's tokenizer (None with a directory)
    forget: list[QAItem] | list[DocUnit]
    forget_info: dict[str, Any]
    retain: list[QAItem] | list[DocUnit]
    retain_info: dict[str, Any] | None


def _data(spec, name: str, required: bool, kind: str = "qa") -> tuple[list[QAItem] | list[Document], dict | None]:
    """A forget/retain argument's records (QA items or documents, by ``kind``: :data:`FORGET_KINDS`) and what the
    manifest records of them."""
    check_choice("kind", kind, FORGET_KINDS, source=f"--{name}-kind")
    if spec is None:
        if required:
            raise R2FInputError("missing", source=f"--{name}")
        return [], None
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        items, digest = read_records(path, kind)  # one read of the file for both
        return items, {"path": str(path), "sha256": digest, "items": len(items)}
    spec = list(spec)
    model = Document if spec and isinstance(spec[0], Document) else record_type(spec[0] if spec else None, kind)
    items = [it if isinstance(it, model) else model.model_validate(it) for it in spec]
    if required and not items:
        raise R2FInputError("no records (empty split)", source=f"--{name}")
    blob = "".join(json.dumps(it.model_dump(), sort_keys=True) + "\n" for it in items).encode()
    return items, {"path": None, "sha256": hashlib.sha256(blob).hexdigest(), "items": len(items)}


def _as_units(items: list[Document], info: dict, tokenizer, chunk_tokens: int, max_length: int | None,
              flag: str = "--forget") -> list[DocUnit]:
    """Documents as the units the engine draws (r2f.data.batching.document_units); ``info`` (the manifest's
    record of the file) gains the kind and the number of units."""
    where = item_locations(info["path"]) if info.get("path") else [f"{flag}[{i}]" for i in range(len(items))]
    units = document_units(tokenizer, items, chunk_tokens, max_length, locations=where)
    info.update(kind="documents", units=len(units))
    return units


def _tokenizer_of(src_dir: Path, trust_remote_code: bool):
    """The tokenizer of a model directory, before the model loads (documents are cut into units up front)."""
    return AutoTokenizer.from_pretrained(src_dir, trust_remote_code=trust_remote_code)


def _model_dir(model) -> Path | None:
    if isinstance(model, (str, os.PathLike)):
        return resolve_model_dir(model)
    return None


def _state_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensor_digests(model: torch.nn.Module, full: dict[str, torch.Tensor] | None = None) -> dict[str, bytes]:
    """A 16-byte digest of every parameter's bytes (which ones an unlearning run changed, without a weight copy).

    ``full``: the parameters' unsharded values (an FSDP model's gathered state dict) instead of the model's own."""
    def value(n: str, p: torch.Tensor) -> torch.Tensor:
        return full[n] if full is not None else p

    return {n: hashlib.blake2b(value(n, p).detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(),
                               digest_size=16).digest() for n, p in model.named_parameters()}


def _module_kind(param_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` → ``q_proj``; ``model.norm.weight`` → ``norm``."""
    parts = [p for p in param_name.split(".") if not p.isdigit() and p not in ("weight", "bias")]
    return parts[-1] if parts else param_name


def changed_parameters(before: dict[str, bytes], model: torch.nn.Module,
                       full: dict[str, torch.Tensor] | None = None) -> dict:
    """Which parameters the run changed: counts, and the module kinds changed and left as they were
    (``full``: an FSDP model's gathered state dict)."""
    after = _tensor_digests(model, full)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    changed = [n for n in after if before.get(n) != after[n]]
    kinds = {_module_kind(n) for n in after}
    changed_kinds = {_module_kind(n) for n in changed}
    return {"tensors": len(changed), "of_tensors": len(after), "params": sum(sizes[n] for n in changed),
            "of_params": sum(sizes.values()), "kinds": sorted(changed_kinds), "unchanged_kinds": sorted(kinds - changed_kinds)}


def _cost(meter: CostMeter, prior: dict | None) -> dict:
    cost = meter.summary()
    if prior:  # a resumed run: this session's cost, plus what the sessions before the checkpoint spent
        cost["before_resume"] = prior
        cost["total_wall_s"] = round(cost["wall_s"] + float(prior.get("wall_s", 0.0)), 4)
    return cost


def recorded_options(options: dict[str, Any]) -> dict[str, Any]:
    """The method's options as the manifest and the run key record them: an injected decoder object by its file
    (a learned decoder) or its name."""
    return {k: (str(getattr(v, "source", None) or v.name) if isinstance(v, Decoder) else v) for k, v in options.items()}


def progress_label(out: Path, method: str) -> str:
    """The run's progress label names the run (its --out), not only the method: the demo runs r2f twice."""
    name = out.resolve().name  # "--out ." names the current directory
    return f"unlearn[{name}]" if name == method else f"unlearn[{name}: {method}]"


def _check_trainable(items: Sequence[QAItem], info: dict, tok, meth, max_length: int | None) -> None:
    """Refuse forget items with no answer token to unlearn (exit 2, naming the record), before any work."""
    if is_documents(items):  # units: every document gave tokens (document_units refuses one that does not)
        return
    template = template_for(tok)
    k = max(1, int(meth.options.get("views", 1) or 1))
    for i, it in enumerate(items):
        why = untrainable(tok, it.views(k), it.answer, template, max_length)
        if why is not None:
            where = item_locations(info["path"])[i] if info.get("path") else f"--forget[{i}]"
            raise R2FInputError(why, source=where)


def unlearn(
    model: str | os.PathLike | torch.nn.Module,
    forget: str | os.PathLike | Sequence[QAItem | dict],
    retain: str | os.PathLike | Sequence[QAItem | dict] | None = None,
    method: str = "r2f",
    decoder: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
    *,
    tokenizer=None,
    lr: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    views: int | None = None,
    save_every: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    max_length: int | None = 512,
    max_failures: int = 3,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    threads: int | None = None,
    fsdp: bool = False,
    forget_kind: str = "auto",
    retain_kind: str = "qa",
    chunk_tokens: int = CHUNK_TOKENS,
    **options: Any,
) -> Path:
    """Unlearn ``forget`` from ``model`` with ``method``; write a Hugging Face model directory to ``out``.

    This is ``r2f unlearn`` (and ``r2f.unlearn``): every option of the command is a keyword argument of the
    same name, with the same default. ``model`` is a model directory, the name ``smollm2``, or an in-memory
    causal LM (then pass ``tokenizer``; it is copied, never modified). ``forget``/``retain`` are JSON/JSONL files
    or lists of records. ``steps`` defaults to 10 epochs of the forget set. ``options`` are the method's own
    options (``--option key=value``; see ``r2f.methods.METHODS[name].defaults``). ``save_every=N`` writes a
    checkpoint every N steps to ``out/checkpoints`` and ``resume=True`` continues from the last one
    (bit-identical on CPU). ``allow_pickle`` / ``trust_remote_code`` let the model load from pickle weights / run
    the code shipped in its directory. ``threads`` sets torch's intra-op threads (default: r2f.threads' policy,
    from the model's size and the free cores; recorded in the manifest). ``fsdp=True`` under torchrun shards the
    target with FSDP2 over the processes (docs/distributed.md; one process: nothing to shard, a plain run).
    ``forget_kind``: ``auto`` (default: documents when the records have ``text`` and no ``question``, or a ``.txt``
    file), ``qa`` or ``documents`` (e.g. the world's biographies); documents are cut into units of ``chunk_tokens``
    tokens (docs/world.md § Documents as forget data) and ``steps`` defaults to 10 epochs of the units.
    ``retain_kind`` (default ``qa``, as before): the same choice for ``retain`` (documents there are cut the same
    way and keep, as retain data, whatever the method's retain term does). Returns
    ``out``, which holds the weights (safetensors), the tokenizer and ``manifest.json``.
    """
    # ---- validation: everything that can be wrong is reported before any work -------------------
    if out is None:
        raise R2FInputError("missing output directory", source="--out")
    out = Path(out)
    check_method(method)
    if decoder is not None and not METHODS[method].uses_decoder:
        raise R2FInputError(f"--decoder only applies to the methods that use a decoder "
                            f"({', '.join(methods_that('uses_decoder'))}; got --method {method})", source="--decoder")
    if views is not None:
        if views < 1:
            raise R2FInputError("must be at least 1", source="--views")
        options["views"] = views
    check_run_settings(steps=steps, lr=lr, batch_size=batch_size, save_every=save_every, max_failures=max_failures)
    check_threads(threads)
    if decoder is not None:
        options["decoder"] = decoder if isinstance(decoder, Decoder) else str(decoder)  # an object: injected
    meth = get_method(method, **options)  # unknown options -> R2FInputError
    if fsdp and not meth.supports_fsdp:  # refused in one process too: the same command line fails under torchrun
        raise R2FInputError(f"method '{method}' does not run on an FSDP-sharded target; drop --fsdp (plain data "
                            "parallelism still applies under torchrun)", source="--fsdp")
    src_dir = _model_dir(model)
    if src_dir is None and not isinstance(model, torch.nn.Module):
        raise R2FInputError(f"expected a model directory, 'smollm2' or a causal LM, got {type(model).__name__}",
                            source="--model")
    if src_dir is None and tokenizer is None:
        raise R2FInputError("an in-memory model needs tokenizer=", source="--model")
    if src_dir is not None and (is_within(out, src_dir) or is_within(src_dir, out)):
        raise R2FInputError("--out must not be the source model directory, inside it, or contain it",
                            source=str(out))
    if resume and not out.exists():
        raise R2FInputError("--resume: no run here to resume (the directory does not exist); drop --resume to "
                            "start a new run", source=str(out))
    check_out_dir(out, overwrite=overwrite or resume, protect=[src_dir] if src_dir else [])
    forget_items, forget_info = _data(forget, "forget", required=True, kind=forget_kind)
    retain_items, retain_info = _data(retain, "retain", required=False, kind=retain_kind)
    documents = None
    if is_documents(forget_items) or is_documents(retain_items):
        check_chunk_tokens(chunk_tokens)
        tok0 = tokenizer if tokenizer is not None else _tokenizer_of(src_dir, trust_remote_code)
        if is_documents(forget_items):
            forget_items = _as_units(forget_items, forget_info, tok0, chunk_tokens, max_length)
        if is_documents(retain_items):
            retain_items = _as_units(retain_items, retain_info, tok0, chunk_tokens, max_length, "--retain")
        documents = {"chunk_tokens": chunk_tokens}
    # every rank takes its slice of each global batch (one process: all of it); passed on, not looked up again
    dp = DataParallel.current()
    # the run, once: the manifest and the run key name the decoder as it was given (recorded before it is loaded)
    spec = RunSpec.build(meth, method, recorded_options(meth.options), len(forget_items), steps=steps, lr=lr,
                         batch_size=batch_size, seed=seed, max_length=max_length, save_every=save_every,
                         max_failures=max_failures, fsdp=bool(fsdp) and dp.active, documents=documents)
    if meth.uses_decoder:  # loaded once, here (an unknown one: exit 2 before the model loads); the method gets it
        meth.options["decoder"] = resolve_decoder(meth.options.get("decoder"))
    ckpt_root = out / CHECKPOINTS
    if resume and out.is_dir() and any(out.iterdir()) and not ckpt_root.is_dir() and not (out / MANIFEST).is_file():
        raise R2FInputError("--resume: no r2f run (checkpoints/ or manifest.json) in this directory", source=str(out))

    # ---- torchrun / accelerate launch: data-parallel over every rank; rank 0 alone writes ------------
    # Each rank takes a slice of every global batch and gradients are all-reduced (r2f.distributed), so
    # the run equals one process on the whole batch; all ranks hold the same weights at every step.
    device = dist.resolve_device(device)
    dist.barrier()  # every rank has validated before rank 0 may write anything
    # threads from the model's size and the free cores (r2f.threads): on a busy CPU, OpenMP threads waiting for a
    # core slow a small model's run many times over
    with model_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), requested_threads(threads), \
            model_threads_for(src_dir if src_dir is not None else model) as chosen:  # _run loads the model
        inputs = RunInputs(model, src_dir, tokenizer, forget_items, forget_info, retain_items, retain_info)
        path = _run(spec, meth, inputs, out, resume=resume, device=device, dp=dp, threads=chosen.to_dict())
    dist.barrier()  # the other ranks return once rank 0's output is in place (a failing rank ends the job)
    return path


def _run(spec: RunSpec, meth, inputs: RunInputs, out: Path, *, resume: bool, device, dp: DataParallel,
         threads: dict | None = None) -> Path:
    """Load, run the engine and write ``out`` (``dp``: the run's data-parallel context; its main rank writes)."""
    fsdp = spec.fsdp  # one process: nothing to shard

    ckpt_root = out / CHECKPOINTS
    # ---- load ------------------------------------------------------------------------------------
    meter = CostMeter(device=device or "cpu")
    with meter:
        with meter.stage("load"):
            if inputs.src_dir is not None:
                net, tok = load_model(inputs.src_dir)
                source = {"path": str(inputs.model), "fingerprint": model_fingerprint(inputs.src_dir)}
            else:
                net, tok = copy.deepcopy(inputs.model), inputs.tokenizer
                source = {"path": None, "fingerprint": _state_fingerprint(net)}
            if device is not None and not fsdp:  # FSDP moves only each rank's rows there (r2f.fsdp.shard_model)
                net.to(device)
        _check_trainable(inputs.forget, inputs.forget_info, tok, meth, spec.max_length)
        config = spec.config()
        run_key = spec.run_key(inputs.forget_info["sha256"],
                               inputs.retain_info["sha256"] if inputs.retain_info else None, source["fingerprint"])

        # A finished run with the same configuration: nothing to redo.
        if resume and (out / MANIFEST).is_file():
            prev = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
            if prev.get("run_key") == json.loads(json.dumps(run_key, default=str)):
                return out
        if not resume and ckpt_root.is_dir() and dp.is_main:
            shutil.rmtree(ckpt_root)  # --overwrite: a fresh run never resumes another run's checkpoints

        before = _tensor_digests(net)
        engine = Engine(net, tok, inputs.forget, inputs.retain, meth, spec.engine_config(), device=device, dp=dp)
        result = engine.run(ckpt_root if spec.save_every > 0 or resume else None, resume=resume, run_key=run_key,
                            cost=meter, desc=progress_label(out, spec.method))
        # FSDP: the unsharded weights, gathered one tensor at a time to rank 0 (a collective: every rank takes part)
        full = full_state_dict(result.model) if fsdp else None
        if not dp.is_main:
            return out  # same weights as rank 0, which writes them
        with meter.stage("save"):
            with atomic_dir(out, overwrite=True) as tmp:
                result.model.save_pretrained(tmp, safe_serialization=True,
                                             **({"state_dict": full} if full is not None else {}))
                tok.save_pretrained(tmp)
                manifest = {
                    "r2f_manifest": 1,
                    "method": spec.method,
                    "config": config,
                    "decoder": config["options"].get("decoder") if meth.uses_decoder else None,
                    "method_info": result.method_info,
                    # no retain file: what the run made its retain data from (r2f.methods.guard), if it made any
                    "data": {"forget": inputs.forget_info, "retain": inputs.retain_info or (
                        {"path": None, "source": engine.retain_source, "items": len(engine.retain)}
                        if engine.retain_source else None)},
                    "source_model": source,
                    "steps": {"budget": spec.steps, "done": result.steps_done,
                              "stopped_early": result.stop_reason is not None, "stop_reason": result.stop_reason},
                    "resumed_from_step": result.resumed_from,
                    "numerics": result.numerics,
                    "changed_parameters": changed_parameters(before, result.model, full),
                    "summary": result.summary,
                    "log": result.log,
                    "run_key": run_key,
                    # how many processes ran (data-parallel), and whether the target was FSDP-sharded over them
                    "distributed": {**dist.describe(), **({"fsdp": True} if fsdp else {})},
                    "threads": threads,  # torch intra-op threads and the rule that chose them (r2f.threads)
                }
                if ckpt_root.is_dir():
                    os.replace(ckpt_root, tmp / CHECKPOINTS)
                manifest["cost"] = _cost(meter, result.prior_cost)
                write_json_atomic(tmp / MANIFEST, manifest)
        manifest["cost"] = _cost(meter, result.prior_cost)  # now including the "save" stage
        write_json_atomic(out / MANIFEST, manifest)
    return out
