"""Gradient fidelity of decoders on a target, and the probe's cost side by side with exact gradients."""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from r2f.data.loader import load_split
from r2f.decoders.algebra import ModuleAlgebra, fidelity_of
from r2f.decoders.api import load_decoder
from r2f.decoders.base import Decoder
from r2f.decoders.learned import BASES, LearnedDecoder, ModuleBases, allowed_bases, closed_form_candidate, module_bases
from r2f.decoders.train import chunks, resolve_model, stats_batches, view_batches_for
from r2f.errors import R2FInputError
from r2f.gradients.probe import (
    LossFn,
    ProbeConfig,
    activation_backward,
    default_loss,
    exact_gradients,
    module_kind,
    probe_gradients,
    target_linears,
)
from r2f.gradients.stats import collect_input_stats
from r2f.progress import progress
from r2f.quiet import native_stderr_silenced
from r2f.threads import model_threads, threads_record

#: Closed forms that read nothing but ∇A, ∇B (every mode has them); ``sketch`` is the column orientation.
LORA_ONLY = ("ls", "sketch", "sketch_row", "lora")


def mode_candidates(access: str) -> tuple[str, ...]:
    """Every closed-form candidate of an access mode: the LoRA-only forms, then the Σ forms the mode allows
    (each a completed candidate of the learned decoder, named as in ``BASES``)."""
    extra = tuple(name for (name, src, _, _), ok in zip(BASES, allowed_bases(access)) if ok and src)
    return LORA_ONLY + extra


def _decoder_for(name: str, access: str) -> Decoder:
    if name in {b[0] for b in BASES} and name not in ("sketch_row", "sketch_col"):
        return closed_form_candidate(name, access)
    return load_decoder(name)


class PeakMemory:
    """Peak of the memory a block allocates beyond what was live at its start (MB).

    CUDA: ``max_memory_allocated``. CPU: the allocation/free events of torch's profiler, summed in time order.
    (The process RSS cannot measure this: freed blocks stay mapped, so a repeated block shows no growth.)
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with native_stderr_silenced():  # the profiler's own start/stop lines on stderr say nothing to a user
            self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return False
        with native_stderr_silenced():
            self._prof.__exit__(*exc)
        deltas = []
        for ev in self._prof.events():
            # frees are "[memory]" events; allocations are attributed to the op that made them (self only)
            delta = ev.cpu_memory_usage if ev.name == "[memory]" else ev.self_cpu_memory_usage
            if delta:
                deltas.append((ev.time_range.start, delta))
        live = peak = 0
        for _, delta in sorted(deltas, key=lambda d: d[0]):
            live += delta
            peak = max(peak, live)
        self.peak_mb = peak / 2**20
        return False


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_cost(model, view_batches, probe: ProbeConfig, decoder: Decoder | None, stats=None, loss_fn: LossFn | None = None, repeats: int = 3) -> dict:
    """probe_s / exact_s / forward_s / decode_s (medians, interleaved) and peak memory for one batch."""
    dev = next(model.parameters()).device
    # the per-batch statistic A·Σ_x only where a decoder reads it (access mode "batch"), as decoded_gradients does:
    # a "stats" decoder reads Σ collected once, so the statistic would be probe work no run pays for
    use_stats = decoder is not None and getattr(decoder, "access", "lora") == "batch"
    t_probe, t_exact, t_fwd, t_dec, t_floor = [], [], [], [], []
    lf = loss_fn or default_loss
    # warm-up
    probe_gradients(model, view_batches[:1], probe, loss_fn, batch_stats=use_stats)
    exact_gradients(model, view_batches[:1], loss_fn, pattern=probe.target_modules)
    sks = None
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        with torch.no_grad():
            for vb in view_batches:
                lf(model, vb)
        _sync(dev)
        t_fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        activation_backward(model, view_batches, loss_fn)
        _sync(dev)
        t_floor.append(time.perf_counter() - t)
        t = time.perf_counter()
        sks = probe_gradients(model, view_batches, probe, loss_fn, batch_stats=use_stats)
        _sync(dev)
        t_probe.append(time.perf_counter() - t)
        t = time.perf_counter()
        g = exact_gradients(model, view_batches, loss_fn, pattern=probe.target_modules)
        _sync(dev)
        t_exact.append(time.perf_counter() - t)
        del g
        if decoder is not None:
            t = time.perf_counter()
            for _ in decoder.decode_many(sks, stats):
                pass
            _sync(dev)
            t_dec.append(time.perf_counter() - t)
    with PeakMemory(dev) as pm_p:
        sks = probe_gradients(model, view_batches, probe, loss_fn, batch_stats=use_stats)
    del sks
    with PeakMemory(dev) as pm_e:
        g = exact_gradients(model, view_batches, loss_fn, pattern=probe.target_modules)
    del g
    med = statistics.median
    probe_s, exact_s, fwd_s, floor_s = med(t_probe), med(t_exact), med(t_fwd), med(t_floor)
    out = {
        "device": str(dev),
        "repeats": repeats,
        "forward_s": round(fwd_s, 5),
        "probe_s": round(probe_s, 5),
        "exact_s": round(exact_s, 5),
        "probe_over_exact": round(probe_s / exact_s, 4) if exact_s > 0 else None,
        # forward + activation backward, no weight gradient: no per-layer gradient method can cost less
        "floor_s": round(floor_s, 5),
        "floor_over_exact": round(floor_s / exact_s, 4) if exact_s > 0 else None,
        # the probe's own work above that floor, in units of exact gradients (issue 17's target: <= 0.06)
        "probe_extra_over_exact": round((probe_s - floor_s) / exact_s, 4) if exact_s > 0 else None,
        "probe_backward_s": round(max(probe_s - fwd_s, 1e-9), 5),
        "probe_peak_mb": round(pm_p.peak_mb, 2),
        "exact_peak_mb": round(pm_e.peak_mb, 2),
    }
    if t_dec:
        dec_s = med(t_dec)
        out["decode_s"] = round(dec_s, 5)
        out["decoder"] = decoder.name
        out["decode_over_probe_backward"] = round(dec_s / max(probe_s - fwd_s, 1e-9), 4)
        out["decode_over_probe"] = round(dec_s / probe_s, 4)
    return out


@model_threads("model")
def measure_fidelity(
    decoder: Decoder | str | None,
    model,
    data_dir: str | os.PathLike | None = None,
    *,
    items: Sequence | None = None,
    split: str = "forget10",
    probe: ProbeConfig | None = None,
    views: int = 4,
    batch_items: int = 4,
    aggregate: str = "mean",
    decoders: Sequence[str] | None = None,
    access: str | None = None,
    stats=None,
    stats_items: Sequence | None = None,
    max_batches: int | None = None,
    loss_fn: LossFn | None = None,
    cost: bool = True,
    proxy_identity: dict | None = None,
) -> dict:
    """Fidelity of each decoder against exact gradients on the target's ``split`` items through K views.

    ``decoder`` is the learned decoder (file/object) reported as ``learned``; the closed forms are built in.
    Items are taken ``batch_items`` at a time, each batch's K views aggregated as in unlearning.

    ``access`` (lora | stats | batch; default: the learned decoder's mode, else batch) sets what the decoders
    may read: without ``decoders`` every closed-form candidate of that mode is measured next to ``learned``;
    ``stats`` Σ is collected only in the stats and batch modes, the batch's own statistic only in batch mode.
    A learned decoder whose mode needs more than ``access`` provides is refused (R2FInputError).
    ``stats_items``: QA items whose forward statistic Σ stands in for generic text (default: the world facts of
    ``data_dir``), as R2F takes it over retain items.
    """
    learned = load_decoder(decoder) if decoder is not None else None
    access = access or getattr(learned, "access", None) or "batch"
    allowed_bases(access)  # an unknown mode: R2FInputError naming --access
    if learned is not None and probe is None:
        p = getattr(learned, "meta", {}).get("probe")
        if p:
            probe = ProbeConfig(rank=p["rank"], rank_a=p["rank_a"], seed=p.get("seed", 0) + 12345, target_modules=p["target_modules"], scale=p["scale"])
    probe = probe or ProbeConfig()
    model, tok, ident = resolve_model(model)
    model.eval()
    kinds = {module_kind(n) for n, _ in target_linears(model, probe.target_modules)}
    if learned is not None:
        learned.check_compatible(probe, kinds)
    if items is None:
        if data_dir is None:
            raise R2FInputError("no items to measure: give --data (or items= from Python)", source="--data")
        items = load_split(data_dir, split)
    if access == "lora":
        stats = None
    elif stats is None and stats_items is not None:
        stats = collect_input_stats(model, stats_batches(list(stats_items), tok), probe, source="stats_items")
    elif stats is None and data_dir is not None:
        try:
            facts = load_split(data_dir, "world_facts")
            stats = collect_input_stats(model, stats_batches(facts, tok), probe, source="world_facts")
        except R2FInputError:
            stats = None
    decs: dict[str, Decoder] = {}
    for name in (decoders if decoders is not None else ("learned",) + mode_candidates(access)):
        if name == "learned":
            if learned is not None:
                decs["learned"] = learned
        else:
            decs[name] = _decoder_for(name, access)
    batches = chunks(list(items), batch_items)
    if max_batches:
        batches = batches[:max_batches]
    per: dict[str, list] = {k: [] for k in decs}
    for b in progress(batches, desc="fidelity"):
        vb = view_batches_for(b, tok, views)
        sks = probe_gradients(model, vb, probe, loss_fn, aggregate=aggregate, with_exact=True,
                              batch_stats=access == "batch")
        for sk in sks:
            alg = ModuleAlgebra(sk, torch.float64)
            shared: dict[tuple, ModuleBases] = {}  # candidates of one mode share the module's candidate blocks
            for name, d in decs.items():
                if isinstance(d, LearnedDecoder):
                    key = (d.access, d.dtype)
                    if key not in shared:
                        shared[key] = module_bases(sk, stats, d.dtype, d.access)
                    gh = d.decode(sk, stats, bases=shared[key])
                else:
                    gh = d.decode(sk, stats)
                fd = fidelity_of(alg, gh, sk.exact)
                per[name].append(
                    {
                        "name": sk.param_name,
                        "kind": sk.kind,
                        "depth": round(sk.depth, 4),
                        "shape": list(sk.shape),
                        "cos": fd.cos,
                        "cos_unobserved": fd.cos_unobserved,
                        "rel_err": fd.rel_err,
                        "resid_a": fd.resid_a,
                        "resid_b": fd.resid_b,
                    }
                )
        del sks
    result: dict = {
        "probe": probe.to_dict(),
        "probe_rank": probe.rank,
        "views": views,
        "batch_items": batch_items,
        "aggregate": aggregate,
        "n_batches": len(batches),
        "n_items": sum(len(b) for b in batches),
        "split": split,
        "target": ident,
        "proxy": (getattr(learned, "meta", {}) or {}).get("proxy") if learned is not None else proxy_identity,
        # every proxy the decoder was trained on (None for decoder files written before ladders)
        "ladder": ((getattr(learned, "meta", {}) or {}).get("ladder") if learned is not None else None),
        "decoder_file": getattr(learned, "source", None) if learned is not None else None,
        "access": access,
        "threads": threads_record(),
        "stats_source": getattr(stats, "source", None) if stats is not None else
        ("batch" if access == "batch" else None),
        "decoders": {},
    }
    for name, rows in per.items():
        agg = _aggregate(rows)
        result["decoders"][name] = agg
        result[name] = agg  # top-level too: fidelity.json["learned"]["cos_mean"]
    if cost and batches:
        vb = view_batches_for(batches[0], tok, views)
        result["cost"] = measure_cost(model, vb, probe, decs.get("learned") or decs.get("sketch"), stats, loss_fn)
    return result


def _aggregate(rows: list[dict]) -> dict:
    """Means over batches×modules, plus a per-module list averaged over batches."""
    if not rows:
        return {"cos_mean": None, "cos_unobserved_mean": None, "rel_err_mean": None, "per_module": []}
    mean = statistics.fmean
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    per_module = []
    for name, rs in by.items():
        per_module.append(
            {
                "name": name,
                "kind": rs[0]["kind"],
                "depth": rs[0]["depth"],
                "shape": rs[0]["shape"],
                "cos": round(mean(r["cos"] for r in rs), 6),
                "cos_unobserved": round(mean(r["cos_unobserved"] for r in rs), 6),
                "rel_err": round(mean(r["rel_err"] for r in rs), 6),
                "resid_a": float(f"{max(r['resid_a'] for r in rs):.3e}"),
                "resid_b": float(f"{max(r['resid_b'] for r in rs):.3e}"),
            }
        )
    by_kind: dict[str, list] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["cos"])
    return {
        "cos_mean": round(mean(r["cos"] for r in rows), 6),
        "cos_unobserved_mean": round(mean(r["cos_unobserved"] for r in rows), 6),
        "rel_err_mean": round(mean(r["rel_err"] for r in rows), 6),
        "resid_max": float(f"{max(max(r['resid_a'], r['resid_b']) for r in rows):.3e}"),
        "cos_by_kind": {k: round(mean(v), 6) for k, v in sorted(by_kind.items())},
        "per_module": per_module,
    }
