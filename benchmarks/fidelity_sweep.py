"""Decoder fidelity vs probe rank and number of views (proxy-trained decoder, measured on the target).

For each rank a decoder is trained on the proxy (cached next to --out); for each number of views K the same
decoder is measured on the target's forget10 items aggregated over K question views (the world has at most
1 + n_paraphrases views per item; larger K are clipped and reported as such: write the world with
``r2f world --paraphrases 7`` for K = 8 — the facts are the same as the default world's, only the number of
paraphrases differs, so models trained on the default world can be measured on it).

    python benchmarks/fidelity_sweep.py --proxy PROXY --target SMALL --data WORLD7 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ranks", default="4,8,16,32")
    ap.add_argument("--views", default="1,2,4,8")
    ap.add_argument("--out", default="fidelity_sweep.json")
    add_record_flag(ap)
    args = ap.parse_args()

    from r2f.data import load_split
    from r2f.decoders import measure_fidelity, train_decoder

    max_views = 1 + min(len(it.paraphrased_question) for it in load_split(args.data, "forget10"))
    rows = []
    for rank in (int(r) for r in args.ranks.split(",")):
        dec = Path(args.out).with_suffix(f".r{rank}.safetensors")
        if not dec.is_file():
            train_decoder(args.proxy, args.data, rank=rank, out=dec, set_default=False)  # not the default
        for k in (int(v) for v in args.views.split(",")):
            used = min(k, max_views)
            t0 = time.perf_counter()
            fid = measure_fidelity(dec, args.target, args.data, views=used, cost=False)
            row = {"rank": rank, "views": k, "views_used": used, "s": round(time.perf_counter() - t0, 1)}
            for name in ("learned", "sketch", "ls", "lora"):
                row[name] = round(fid[name]["cos_mean"], 4)
                row[f"{name}_unobs"] = round(fid[name]["cos_unobserved_mean"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    if not args.no_record:
        body = ("One decoder per rank (r_A = 2 r_B), trained on the proxy; cos on the target's forget10 items "
                "(batches of 4), aggregated over K question views.\n\n" + table(
                    ["rank r_B", "views K (used)", "learned", "sketch", "ls", "lora", "learned unobs.", "sketch unobs."],
                    [[r["rank"], f"{r['views']} ({r['views_used']})", r["learned"], r["sketch"], r["ls"], r["lora"],
                      r["learned_unobs"], r["sketch_unobs"]] for r in rows]))
        record("fidelity_sweep", "Decoder fidelity vs probe rank and number of views", body)


if __name__ == "__main__":
    main()
