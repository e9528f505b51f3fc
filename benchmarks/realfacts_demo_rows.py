"""Rows of ``r2f demo --target smollm2-base --bench realfacts`` one at a time, without the demo's fidelity stage.

Prepares what the demo prepares (world, proxy, its decoders, SmolLM2 as shipped, the realfacts forget and retain
files; all from the cache once built), then runs each named demo row with the demo's own ``demo_row`` (the same
options, step budget and realfacts scoring) and prints its summary. Each row's eval.json and manifest.json land in
``OUT/runs/NAME`` as in the demo (``original``: its eval.json only). For a session that cannot wait for the whole
demo, to add rows to one that was stopped, or to measure a method option on this bench (``-o key=value``, parsed as
``r2f unlearn -o``, replaces the row's option as a bench grid entry does; ``--steps`` the demo's budget of 10), or on
another forget request than the shipped one (``--request K``, 1–5: ten other countries by the same split rule,
``r2f.data.realfacts.assign_splits``), so that a setting can be chosen on requests the reported one never saw:

    python benchmarks/realfacts_demo_rows.py --out /tmp/h1/rf_rows npo grad_diff original
    python benchmarks/realfacts_demo_rows.py --out /tmp/h1/rf_w1 -o retain_weight=1 r2f
    python benchmarks/realfacts_demo_rows.py --out /tmp/h1/rf_req1 --request 1 r2f original
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from r2f.commands.unlearn import _parse_options  # the values `r2f unlearn -o` would pass
    from r2f.data.realfacts import write_request
    from r2f.demo import DEMO_METHODS, DemoConfig, demo_row, prepare
    from r2f.io import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", choices=["original", *DEMO_METHODS], metavar="ROW",
                    help="original or a demo method")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="step budget (default: the realfacts demo's)")
    ap.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                    help="replace a method option of every named method row (repeatable)")
    ap.add_argument("--request", type=int, default=0,
                    help="forget request of the realfacts split rule (default 0: the shipped splits)")
    args = ap.parse_args(argv)
    overrides = _parse_options(args.option)  # a malformed option fails before anything is written
    data = str(write_request(args.out / f"realfacts-request-{args.request}", args.request)) if args.request else None
    cfg = DemoConfig(target="smollm2-base", bench="realfacts", seed=args.seed, steps=args.steps, realfacts_data=data)
    prep = prepare(args.out, cfg, print, {})
    for name in args.rows:
        t0 = time.perf_counter()
        row = demo_row(prep, cfg, name, args.out / "runs" / name, None, overrides)
        if name == "original":
            (args.out / "runs" / name).mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.out / "runs" / name / "eval.json", row["eval"])
        print(name, "done", round(time.perf_counter() - t0, 1), json.dumps(row["eval"]["summary"]), flush=True)


if __name__ == "__main__":
    main()
