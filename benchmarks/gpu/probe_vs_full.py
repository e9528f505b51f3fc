#!/usr/bin/env python
"""Probe gradients vs a full-gradient AdamW step on random-init Llama shapes (GPU only, no downloads).

For each shape (~1.1B: TinyLlama-like; ~6.7B: Llama-2-7B-like) in bf16, batch 8×512 random tokens,
with and without activation checkpointing, measures median wall time and peak CUDA memory of:
  * full:  forward + backward (all parameters) + AdamW step + zero_grad;
  * probe: forward + backward with r2f's LoRA probe (rank 16, r_A 32, no weight gradients).
Writes a JSON (and prints a table). Runs in well under 5 minutes on one H200.

    python benchmarks/gpu/probe_vs_full.py --out probe_vs_full.json [--shapes 1.1b,6.7b] [--iters 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _record import add_record_flag, record, table  # noqa: E402

import torch  # noqa: E402

SHAPES = {
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    "6.7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
}


def build(shape: str, checkpointing: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False, **SHAPES[shape])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(prev)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def loss_of(model, ids):
    out = model(input_ids=ids, labels=ids)
    return out.loss


def timed(fn, iters: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def bench(shape: str, checkpointing: bool, batch: int, seq: int, iters: int, rank: int) -> dict:
    from r2f.gradients import ProbeConfig, probe_gradients

    model = build(shape, checkpointing)
    ids = torch.randint(0, 32000, (batch, seq), device="cuda")
    res = {"shape": shape, "checkpointing": checkpointing, "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3)}

    # forward only
    with torch.no_grad():
        res["forward_ms"], res["forward_gib"] = timed(lambda: loss_of(model, ids), iters)

    # probe gradients (weights frozen inside the probe; only the two sketches per layer)
    probe = ProbeConfig(rank=rank)
    batch_d = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def probe_step():
        probe_gradients(model, [batch_d], probe, lambda m, b: loss_of(m, b["input_ids"]), batch_stats=False)

    res["probe_ms"], res["probe_gib"] = timed(probe_step, iters)
    gc.collect()
    torch.cuda.empty_cache()

    # full-gradient AdamW step
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    def full_step():
        loss = loss_of(model, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    res["full_ms"], res["full_gib"] = timed(full_step, iters)
    res["time_ratio"] = round(res["probe_ms"] / res["full_ms"], 3)
    res["memory_ratio"] = round(res["probe_gib"] / res["full_gib"], 3)
    for k in list(res):
        if isinstance(res[k], float):
            res[k] = round(res[k], 3)
    opt = model = None  # free before the next shape
    gc.collect()
    torch.cuda.empty_cache()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="probe_vs_full.json")
    ap.add_argument("--shapes", default="1.1b,6.7b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--checkpointing", default="off,on", help="off, on or off,on")
    add_record_flag(ap)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("probe_vs_full.py needs a CUDA device")
    t0 = time.time()
    rows = []
    for shape in args.shapes.split(","):
        for ck in args.checkpointing.split(","):
            row = bench(shape, ck == "on", args.batch, args.seq, args.iters, args.rank)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"device": torch.cuda.get_device_name(), "batch": args.batch, "seq": args.seq, "rank": args.rank,
           "rows": rows, "seconds": round(time.time() - t0, 1)}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(out, fh, indent=2)
    os.replace(tmp, args.out)
    print(f"{'shape':6} {'ckpt':4} {'full ms':>9} {'full GiB':>9} {'probe ms':>9} {'probe GiB':>9} {'t ratio':>8} {'m ratio':>8}")
    for r in rows:
        print(f"{r['shape']:6} {('on' if r['checkpointing'] else 'off'):4} {r['full_ms']:9.1f} {r['full_gib']:9.1f} "
              f"{r['probe_ms']:9.1f} {r['probe_gib']:9.1f} {r['time_ratio']:8.2f} {r['memory_ratio']:8.2f}")
    if not args.no_record:
        body = (f"bf16, random-init Llama shapes, batch {args.batch}×{args.seq}, probe rank {args.rank}; medians of "
                f"{args.iters} iterations; {out['seconds']} s in all.\n\n" + table(
                    ["shape", "checkpointing", "full step ms", "full GiB", "probe ms", "probe GiB", "time ratio",
                     "memory ratio"],
                    [[r["shape"], "on" if r["checkpointing"] else "off", r["full_ms"], r["full_gib"], r["probe_ms"],
                      r["probe_gib"], r["time_ratio"], r["memory_ratio"]] for r in rows]))
        record("gpu_probe_vs_full", f"GPU: probe gradients vs a full-gradient AdamW step ({out['device']})", body)


if __name__ == "__main__":
    main()
