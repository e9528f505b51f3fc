"""The demo's rows on the SmolLM2 world target without the demo's fidelity stage (R2F-defaults issue, SmolLM2 check).

Prepares what ``r2f demo --target smollm2 --seed S`` prepares (world, SmolLM2 fine-tuned on it, its retain oracle,
the decoder trained on this target's proxy ladder; all cached), then runs each requested row with ``r2f.unlearn``
on the demo's forget and retain files and evaluates it as the demo does (48 retain items, against the oracle).
Rows are ``NAME|METHOD|JSON`` (the method's options; R2F gets the demo's learned decoder). Results go to
``OUT/rows.jsonl``.

    python benchmarks/smollm2_r2f_row.py --out /tmp/w/smol0 "r2f|r2f|{}" "npo|npo|{}"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from r2f.demo import DemoConfig, prepare
    from r2f.eval import evaluate
    from r2f.io import write_json_atomic
    from r2f.methods import unlearn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="NAME|METHOD|JSON options")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = DemoConfig(target="smollm2", seed=args.seed, methods=["r2f"])
    prep = prepare(args.out, cfg, print, {})

    def scored(model, cache: Path, retain_log=None) -> dict:
        if cache.is_file():
            return json.loads(cache.read_text())
        result = evaluate(str(model), prep.world, retain_log=retain_log, spec=cfg.eval_spec)
        write_json_atomic(cache, result)
        return result

    oracle = scored(prep.retain, args.out / "oracle-eval.json")
    original = scored(prep.full, args.out / "orig-eval.json", oracle)["summary"]
    print("original", original["forget_quality"], original["model_utility"])
    for spec in args.rows:
        name, method, options = spec.split("|", 2)
        t0 = time.time()
        run = unlearn(prep.full, prep.forget_file, prep.retain_file, method=method,
                      decoder=prep.decoder if method == "r2f" else None, out=args.out / "runs" / name,
                      seed=args.seed, steps=cfg.steps, overwrite=True, **json.loads(options))
        ev = scored(run, run / "eval.json", oracle)["summary"]
        steps = json.loads((run / "manifest.json").read_text())["steps"]
        row = {"FQ": ev["forget_quality"], "MU": ev["model_utility"],
               "MU_x": ev["model_utility"] / original["model_utility"], "forget": ev["forget_Q_A_ROUGE"],
               "retain": ev["retain_Q_A_ROUGE"], "wf": ev["wf_Q_A_ROUGE"], "steps": steps["done"],
               "stop": steps["stop_reason"], "wall": round(time.time() - t0)}
        print(name, row, flush=True)
        with open(args.out / "rows.jsonl", "a") as f:
            f.write(json.dumps({name: row}) + "\n")


if __name__ == "__main__":
    main()
