"""Per-step cost of unlearning methods, side by side in one run (each method in its own process).

Runs ``r2f unlearn`` for every method on the same model and data with the same step budget (R2F's stop rule
off, so every run does all steps), then reads each manifest: median per-step wall time and the process's peak
memory (RSS on CPU). Prints and writes ratios against ``grad_ascent``.

    python benchmarks/unlearn_cost.py --model MODEL --data WORLD --decoder DEC.safetensors --out cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402

RUNS = {  # name -> extra CLI arguments
    "grad_ascent": ["--method", "grad_ascent"],
    "r2f": ["--method", "r2f", "--decoder", "{decoder}", "-o", "stop=none"],
    "r2f_sketch": ["--method", "r2f", "--decoder", "sketch", "-o", "stop=none"],
    "exact": ["--method", "exact", "-o", "stop=none"],
    "lora": ["--method", "lora"],
    "npo": ["--method", "npo"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="target model directory")
    ap.add_argument("--data", required=True, help="world directory (forget10 / retain90)")
    ap.add_argument("--decoder", required=True, help="learned decoder file")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--methods", default=",".join(RUNS))
    ap.add_argument("--out", default="unlearn_cost.json")
    add_record_flag(ap)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "R2F_NO_PROGRESS": "1"}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            out = Path(tmp) / name
            extra = [a.format(decoder=args.decoder) for a in RUNS[name]]
            cmd = [sys.executable, "-m", "r2f", "unlearn", "--model", args.model, "--forget",
                   f"{args.data}/forget10.jsonl", "--retain", f"{args.data}/retain90.jsonl", "--steps",
                   str(args.steps), "--out", str(out), *extra]
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            man = json.loads((out / "manifest.json").read_text())
            step_s = [r["wall_s"] for r in man["log"] if "wall_s" in r]
            rows[name] = {"steps": len(step_s), "step_s_median": statistics.median(step_s),
                          "peak_mem_mb": man["cost"]["peak_mem_mb"], "wall_s": man["cost"]["wall_s"]}
            print(f"{name:12s} {rows[name]['step_s_median']:.3f} s/step  peak {rows[name]['peak_mem_mb']:.0f} MB",
                  flush=True)
    base = rows.get("grad_ascent")
    if base:
        for row in rows.values():
            row["time_ratio_vs_grad_ascent"] = round(row["step_s_median"] / base["step_s_median"], 3)
            row["mem_ratio_vs_grad_ascent"] = round(row["peak_mem_mb"] / base["peak_mem_mb"], 3)
    Path(args.out).write_text(json.dumps({"args": vars(args), "methods": rows}, indent=2) + "\n")
    print(json.dumps(rows, indent=1))
    if not args.no_record:
        body = (f"{args.steps} steps per method, each in its own process, same model and data; median step time and "
                "the process's peak RSS; ratios against grad_ascent from the same run.\n\n" + table(
                    ["method", "s / step", "× grad_ascent", "peak RSS MB", "× grad_ascent"],
                    [[k, r["step_s_median"], r.get("time_ratio_vs_grad_ascent"), r["peak_mem_mb"],
                      r.get("mem_ratio_vs_grad_ascent")] for k, r in rows.items()]))
        record("unlearn_cost", "Per-step cost of unlearning methods, side by side", body)


if __name__ == "__main__":
    main()
