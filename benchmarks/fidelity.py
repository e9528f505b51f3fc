#!/usr/bin/env python
"""Gradient-fidelity and cost benchmark of the R2F decoder (CPU or GPU).

Trains (or loads) a learned decoder on the PROXY model with the proxy author pool, then measures on the
TARGET model's forget10 items through K views, side by side: learned / sketch / ls / lora / sigma fidelity
(cos, cos on the unobserved block, relative error) and the probe's cost against exact gradients on the
same batch. Checks the acceptance targets and writes everything to one JSON file.

    python benchmarks/fidelity.py --proxy PROXY_DIR --target SMALL_DIR --data WORLD_DIR --out fidelity_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", help="proxy model directory (trains the decoder unless --decoder is given)")
    ap.add_argument("--target", required=True, help="target model directory")
    ap.add_argument("--data", required=True, help="world directory")
    ap.add_argument("--decoder", help="existing decoder file (skip training)")
    ap.add_argument("--decoder-out", default=None, help="where to save the trained decoder")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--batch-items", type=int, default=4)
    ap.add_argument("--max-batches", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--probe-seeds", type=int, default=2)
    ap.add_argument("--cost-items", type=int, default=16, help="items in the cost batch (K views each)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = r2f's policy: 1 below 50M parameters)")
    ap.add_argument("--out", default="fidelity_bench.json")
    add_record_flag(ap)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from r2f.data.loader import load_split
    from r2f.decoders import load_decoder, measure_cost, measure_fidelity, train_decoder
    from r2f.decoders.train import resolve_model, stats_batches, view_batches_for
    from r2f.gradients import ProbeConfig, collect_input_stats

    t0 = time.time()
    if args.decoder:
        dec = load_decoder(args.decoder)
        train_s = None
    else:
        if not args.proxy:
            ap.error("--proxy is required unless --decoder is given")
        t = time.time()
        dec = train_decoder(args.proxy, args.data, rank=args.rank, out=args.decoder_out, views=args.views,
                            batch_items=args.batch_items, probe_seeds=args.probe_seeds, steps=args.steps,
                            set_default=False)  # a benchmark's decoder is not the machine's default
        train_s = time.time() - t
    p = dec.meta["probe"]
    probe = ProbeConfig(rank=p["rank"], rank_a=p["rank_a"], seed=p.get("seed", 0) + 12345,
                        target_modules=p["target_modules"], scale=p["scale"])
    model, tok, ident = resolve_model(args.target)
    model.eval()
    t = time.time()
    res = measure_fidelity(dec, (model, tok), args.data, probe=probe, views=args.views, batch_items=args.batch_items,
                           max_batches=args.max_batches or None, cost=False)
    res["target"] = ident
    fid_s = time.time() - t
    # cost on a larger batch (side by side, same run)
    items = load_split(args.data, "forget10")[: args.cost_items]
    stats = collect_input_stats(model, stats_batches(load_split(args.data, "world_facts"), tok), probe)
    from r2f.threads import threads_for, torch_threads

    with torch_threads(args.threads or threads_for(model)):  # r2f's policy: 1 thread for models < 50M params
        res["cost"] = measure_cost(model, view_batches_for(items, tok, args.views), probe, dec, stats)
    res["cost"]["torch_threads"] = args.threads or threads_for(model) or torch.get_num_threads()
    res["cost"]["items"] = len(items)
    d = res["decoders"]
    err = {k: 1 - v["cos_mean"] for k, v in d.items() if v["cos_mean"] is not None}
    c = res["cost"]
    res["acceptance"] = {
        "learned_cos_mean>=0.85": d["learned"]["cos_mean"] >= 0.85,
        "learned_err<=0.7*sketch_err": err["learned"] <= 0.7 * err["sketch"],
        "learned_err<=0.7*ls_err": err["learned"] <= 0.7 * err["ls"],
        "learned_cos_unobs>sketch_cos_unobs": d["learned"]["cos_unobserved_mean"] > d["sketch"]["cos_unobserved_mean"],
        "probe<=0.75*exact": c["probe_over_exact"] <= 0.75,
        "decode<=0.25*probe_backward": c["decode_over_probe_backward"] <= 0.25,
        "err_ratio_vs_sketch": round(err["learned"] / max(err["sketch"], 1e-12), 4),
        "err_ratio_vs_ls": round(err["learned"] / max(err["ls"], 1e-12), 4),
    }
    res["decoder_meta"] = {k: dec.meta.get(k) for k in ("proxy", "data", "training", "fidelity_heldout")}
    res["timing"] = {"train_decoder_s": train_s, "fidelity_s": round(fid_s, 2), "total_s": round(time.time() - t0, 2),
                     "torch_threads": torch.get_num_threads()}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(res, fh, indent=2)
    os.replace(tmp, args.out)
    for k, v in d.items():
        print(f"{k:8} cos {v['cos_mean']:.4f}  cos_unobs {v['cos_unobserved_mean']:.4f}  rel_err {v['rel_err_mean']:.4f}")
    if not args.no_record:
        record("fidelity", f"Decoder fidelity and probe cost: proxy → {os.path.basename(args.target.rstrip('/'))}",
               fidelity_markdown(res, views=args.views))
    print(json.dumps(res["cost"]))
    print(json.dumps(res["acceptance"]))


def fidelity_markdown(res: dict, views: int) -> str:
    """Decoder table and side-by-side cost of one fidelity run (shared with smollm2_fidelity.py)."""
    d = res.get("decoders") or {k: res[k] for k in ("learned", "sketch", "ls", "lora", "sigma") if isinstance(res.get(k), dict)}
    rows = [[k, v["cos_mean"], v["cos_unobserved_mean"], v["rel_err_mean"]] for k, v in d.items()]
    c = res.get("cost") or {}
    out = [f"Probe rank {res.get('probe', {}).get('rank', '?')}, {views} views, mean aggregation; "
           f"fidelity over {res.get('n_items', '?')} target items in batches of {res.get('batch_items', '?')}.", "",
           table(["decoder", "cos_mean", "cos_unobserved_mean", "rel_err_mean"], rows)]
    if c:
        out += ["", f"Cost on one batch of {c.get('items', '?')} items × {views} views, side by side, medians of "
                f"{c.get('repeats')} interleaved repeats ({c.get('device')}):", "",
                table(["quantity", "seconds", "ratio"],
                      [["forward only", c.get("forward_s"), None],
                       ["exact gradients of the probed weights", c.get("exact_s"), 1.0],
                       ["floor: forward + activation backward, no weight gradient", c.get("floor_s"),
                        c.get("floor_over_exact")],
                       ["probe gradients (both sketches + batch statistic)", c.get("probe_s"), c.get("probe_over_exact")],
                       ["learned decode of every module (ratio: ÷ probe backward)", c.get("decode_s"),
                        c.get("decode_over_probe_backward")]]),
                "", f"Peak memory beyond the model: probe {c.get('probe_peak_mb')} MB, exact {c.get('exact_peak_mb')} MB."]
    acc = res.get("acceptance")
    if acc:
        out += ["", "Acceptance checks: " + ", ".join(f"`{k}` {v}" for k, v in acc.items()) + "."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
