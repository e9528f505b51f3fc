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
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoder", required=True, help="learned decoder trained on the proxy")
    ap.add_argument("--data", required=True, help="world directory (its world_facts split is used)")
    ap.add_argument("--items", type=int, default=8, help="number of real-fact items")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--out", default="smollm2_fidelity.json")
    args = ap.parse_args()

    from r2f.data import load_split
    from r2f.decoders import measure_fidelity

    items = load_split(args.data, "world_facts")[: args.items]
    start = time.perf_counter()
    fid = measure_fidelity(args.decoder, "smollm2", items=items, views=args.views, batch_items=4)
    fid["benchmark"] = {"items": len(items), "views": args.views, "wall_s": round(time.perf_counter() - start, 1)}
    with open(args.out, "w") as fh:
        json.dump(fid, fh, indent=2, default=str)
    for name in ("learned", "sketch", "ls", "lora", "sigma"):
        if isinstance(fid.get(name), dict):
            row = fid[name]
            print(f"{name:8s} cos {row['cos_mean']:.3f}  unobserved {row['cos_unobserved_mean']:.3f}  "
                  f"rel_err {row['rel_err_mean']:.3f}")
    print("cost", json.dumps(fid.get("cost")))


if __name__ == "__main__":
    main()
