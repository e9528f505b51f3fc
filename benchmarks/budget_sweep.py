"""Unlearning quality vs step budget per method (the demo pipeline at several budgets).

Runs ``r2f demo``'s pipeline (cached world, models and decoder) once per budget and collects forget quality,
model utility and forget/retain ROUGE per method.

    python benchmarks/budget_sweep.py --budgets 10,20,30,50 --out budget_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEYS = ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="10,20,30,50")
    ap.add_argument("--methods", default="r2f,r2f_sketch,r2f_exact,lora,grad_diff,npo,simnpo")
    ap.add_argument("--quick", action="store_true", help="tiny target")
    ap.add_argument("--out", default="budget_sweep.json")
    add_record_flag(ap)
    args = ap.parse_args()

    from r2f.demo import DemoConfig, run_demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in (int(b) for b in args.budgets.split(",")):
            cfg = DemoConfig(quick=args.quick, steps=budget, methods=args.methods.split(","))
            report = run_demo(Path(tmp) / f"b{budget}", cfg, log=lambda m: None)
            for name, row in report["methods"].items():
                if name in ("original", "retrain") and budget != int(args.budgets.split(",")[0]):
                    continue
                rows.append({"budget": budget, "method": name, **{k: row.get(k) for k in KEYS}})
                print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    if not args.no_record:
        budgets = sorted({r["budget"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        cell = {(r["method"], r["budget"]): r for r in rows}

        def fq_mu(method, budget):
            r = cell.get((method, budget)) or cell.get((method, budgets[0]))  # oracles are run once
            return f"{_num(r['forget_quality'])} / {_num(r['model_utility'])}" if r else "–"

        body = ("The demo pipeline (same world, models, decoder and retain data) at each step budget; forget quality "
                "(FQ, ≥ 0.05: indistinguishable from the retain oracle at 5 %) / model utility (MU).\n\n" + table(
                    ["method", *(f"budget {b}: FQ / MU" for b in budgets)],
                    [[m, *(fq_mu(m, b) for b in budgets)] for m in methods]))
        record("budget_sweep", "Unlearning quality vs step budget", body)


def _num(v) -> str:
    if v is None:
        return "–"
    return f"{v:.1e}" if 0 < abs(v) < 1e-2 else f"{v:.3f}"


if __name__ == "__main__":
    main()
