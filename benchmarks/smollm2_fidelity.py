"""Transfer of the proxy-trained decoder to the real SmolLM2-135M-Instruct (another tokenizer, 30 layers, width 576).

Measures decoder fidelity on real-fact questions with paraphrases (the world's ``world_facts`` split: capitals,
element symbols, planets; SmolLM2 knows most of them), prompted through SmolLM2's chat template, and the probe's
cost against exact gradients on the same batch.

    python benchmarks/smollm2_fidelity.py --decoder DEC.safetensors --data WORLD --out smollm2_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record  # noqa: E402
from fidelity import fidelity_markdown  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoder", required=True, help="learned decoder trained on the proxy")
    ap.add_argument("--data", required=True, help="world directory (its world_facts split is used)")
    ap.add_argument("--items", type=int, default=8, help="number of items measured")
    ap.add_argument("--split", default="world_facts",
                    help="world split (or JSONL file) measured: world_facts (real facts, default) or e.g. forget10")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--no-cost", action="store_true", help="skip the probe-vs-exact cost measurement")
    ap.add_argument("--access", default="batch", choices=("lora", "stats", "batch"),
                    help="what the decoders may read besides the LoRA gradients")
    ap.add_argument("--cost-items", type=int, default=16, help="items in the cost batch (K views each)")
    ap.add_argument("--out", default="smollm2_fidelity.json")
    add_record_flag(ap)
    args = ap.parse_args()

    import torch

    from r2f.data import load_split
    from r2f.decoders import load_decoder, measure_cost, measure_fidelity
    from r2f.decoders.train import resolve_model, stats_batches, view_batches_for
    from r2f.gradients import ProbeConfig, collect_input_stats

    facts = load_split(args.data, "world_facts")
    if args.split == "world_facts":
        items = facts[: args.items]
    elif args.split.endswith(".jsonl"):
        from r2f.data.loader import load_items

        items = load_items(args.split)[: args.items]
    else:
        items = load_split(args.data, args.split)[: args.items]
    start = time.perf_counter()
    dec = load_decoder(args.decoder)
    model, tok, _ = resolve_model("smollm2")
    p = dec.meta["probe"]
    probe = ProbeConfig(rank=p["rank"], rank_a=p["rank_a"], target_modules=p["target_modules"], scale=p["scale"])
    # Σ of the target on generic text: the facts not measured (a decoder of mode stats/batch needs it; before
    # 2026-12-02 this benchmark passed none and the learned decoder silently decoded with sentinel features)
    stat_items = (facts[args.items:] or facts) if args.split == "world_facts" else facts
    stats = collect_input_stats(model, stats_batches(stat_items, tok), probe) \
        if args.access != "lora" else None
    fid = measure_fidelity(dec, (model, tok), items=items, views=args.views, batch_items=4, cost=False,
                           stats=stats, access=args.access)
    # cost side by side on one larger batch (as benchmarks/fidelity.py)
    if not args.no_cost:
        fid["cost"] = measure_cost(model, view_batches_for(facts[: args.cost_items], tok, args.views), probe, dec,
                                   stats)
        fid["cost"]["items"] = min(args.cost_items, len(facts))
        fid["cost"]["torch_threads"] = torch.get_num_threads()  # a 135M model runs at torch's default
    fid["benchmark"] = {"items": len(items), "views": args.views, "wall_s": round(time.perf_counter() - start, 1)}
    with open(args.out, "w") as fh:
        json.dump(fid, fh, indent=2, default=str)
    for name in fid["decoders"]:
        if isinstance(fid.get(name), dict):
            row = fid[name]
            print(f"{name:8s} cos {row['cos_mean']:.3f}  unobserved {row['cos_unobserved_mean']:.3f}  "
                  f"rel_err {row['rel_err_mean']:.3f}")
    print("cost", json.dumps(fid.get("cost")))
    if not args.no_record:
        record("smollm2_fidelity", "Decoder transfer to SmolLM2-135M-Instruct (real facts)",
               fidelity_markdown(fid, views=args.views))


if __name__ == "__main__":
    main()
