"""Rows of ``r2f demo --target smollm2-base --bench realfacts`` one at a time, without the demo's fidelity stage.

Prepares what the demo prepares (world, proxy, its decoders, SmolLM2 as shipped, the realfacts forget and retain
files; all from the cache once built), then runs each named demo row with the demo's own ``demo_row`` (the same
options, step budget and realfacts scoring) and prints its summary. Each row's eval.json and manifest.json land in
``OUT/runs/NAME`` as in the demo (``original``: its eval.json only). For a session that cannot wait for the whole
demo, or to add rows to one that was stopped.

    python benchmarks/realfacts_demo_rows.py --out /tmp/h1/rf_rows npo grad_diff original
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from r2f.demo import DEMO_METHODS, DemoConfig, demo_row, prepare
    from r2f.io import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", choices=["original", *DEMO_METHODS], metavar="ROW",
                    help="original or a demo method")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = DemoConfig(target="smollm2-base", bench="realfacts", seed=args.seed)
    prep = prepare(args.out, cfg, print, {})
    for name in args.rows:
        t0 = time.perf_counter()
        row = demo_row(prep, cfg, name, args.out / "runs" / name, None)
        if name == "original":
            (args.out / "runs" / name).mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.out / "runs" / name / "eval.json", row["eval"])
        print(name, "done", round(time.perf_counter() - t0, 1), json.dumps(row["eval"]["summary"]), flush=True)


if __name__ == "__main__":
    main()
