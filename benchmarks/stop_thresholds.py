"""Where R2F's stop threshold sits against the retain oracle, world by world (R2F-defaults issue, the stop rule).

R2F stops once the forget set's mean answer NLL reaches a threshold measured on the *original* model
(``stop=shuffled``: each forget question with another forget item's answer of the same kind). A model that never
learned the forget authors — the retain oracle — scores the forget answers at some NLL of its own; this script sets
the two side by side, with the other references a run could use:

* ``oracle``: the retain oracle's NLL of the forget answers (what "forgotten" means in NLL);
* ``shuffled``: R2F's default threshold (``r2f.data.batching.shuffled_answer_pairs``, the original model);
* ``perturbed``: ``stop=perturbed`` (the data's perturbed answers, the original model);
* ``holdout``: the original model's NLL of the holdout authors' answers (authors it never saw: needs a holdout split,
  which a deletion request does not bring, so no stop rule can rely on it);

and, where the directory holds an R2F run (``runs/<name>/manifest.json`` with its ``eval.json``), the forget-set
NLL at which that run stopped, its steps, forget quality and forget truth ratio against the oracle's, and its
collateral watch (the rise of the target's NLL of its own answers to generic questions, logged each step as
``watch_rise`` since ``past_threshold=while_clean``: at the stop and at most over the run). ``gap``: how
much likelier than a shuffled (wrong, same-kind) answer a model finds the true one at its own weights, NLL(shuffled)
− NLL(true), for the original, the run's model and the oracle (a knowledge-level signal, unlike the threshold).

Forward passes only; every model must already be in r2f's model cache (an ``r2f demo`` or
``benchmarks/smollm2_r2f_row.py`` run leaves them there): nothing is trained.

    python benchmarks/stop_thresholds.py runs/demo-s0 runs/demo-s1 --out thresholds.json
    python benchmarks/stop_thresholds.py /tmp/smol0 --target smollm2 --out smol_thresholds.json --no-record
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cached_model(world: Path, size: str, split: str, seed: int) -> Path:
    """The cached model ``r2f.models.training.train_model`` would return, without ever training one."""
    from r2f.models.training import cached_model_dir

    path = cached_model_dir(world, size, split, "forget10", seed)
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"{path}: not in the model cache (run the demo for this world first)")
    return path


def mean_nll(model, tokenizer, template, pairs: list[tuple[str, str]]) -> float:
    """Mean over pairs of the per-pair mean answer-token NLL (R2F's forget-set signal)."""
    import torch

    from r2f.data.batching import QAEncoder
    from r2f.models.answer_nll import sequence_nll

    encode = QAEncoder(tokenizer, template)
    vals: list[float] = []
    with torch.no_grad():
        for i in range(0, len(pairs), 16):
            chunk = pairs[i:i + 16]
            s, n = sequence_nll(model, encode([q for q, _ in chunk], [a for _, a in chunk]))
            vals += (s / n.clamp_min(1)).tolist()
    return sum(vals) / len(vals)


def one_world(run_dir: Path, size: str, run_name: str) -> dict:
    from r2f.data.loader import load_items
    from r2f.data.templates import template_for
    from r2f.data.batching import shuffled_answer_pairs
    from r2f.models import load_model

    world = run_dir / "world"
    seed = json.loads((world / "world.json").read_text())["config"]["seed"]
    forget, holdout = load_items(world / "forget10.jsonl"), load_items(world / "holdout.jsonl")
    own = [(it.question, it.answer) for it in forget]
    shuffled = shuffled_answer_pairs(forget)

    def gap(model, tokenizer) -> float:
        """How much likelier than a wrong answer of the same kind the model finds the true one, at its own
        weights: NLL(shuffled answers) − NLL(true answers) (≈ 0 for a model that never learned the items)."""
        template = template_for(tokenizer)
        return mean_nll(model, tokenizer, template, shuffled) - mean_nll(model, tokenizer, template, own)

    oracle, tok = load_model(cached_model(world, size, "retain", seed))
    row: dict = {"dir": str(run_dir), "seed": seed, "target": size,
                 "oracle": mean_nll(oracle, tok, template_for(tok), own)}
    row["oracle_gap"] = mean_nll(oracle, tok, template_for(tok), shuffled) - row["oracle"]  # gap(), own measured once
    del oracle
    full, tok = load_model(cached_model(world, size, "full", seed))
    template = template_for(tok)
    row |= {"original": mean_nll(full, tok, template, own), "shuffled": mean_nll(full, tok, template, shuffled)}
    row |= {"original_gap": row["shuffled"] - row["original"],  # gap(full, tok) from the two NLLs just measured
            "perturbed": mean_nll(full, tok, template,
                                  [(it.question, wrong) for it in forget for wrong in it.perturbed_answer]),
            "holdout": mean_nll(full, tok, template, [(it.question, it.answer) for it in holdout])}
    run = run_dir / "runs" / run_name
    if (run / "manifest.json").is_file() and (run / "eval.json").is_file():
        man = json.loads((run / "manifest.json").read_text())
        ev = json.loads((run / "eval.json").read_text())["summary"]
        last = man["log"][-1]
        unlearned, utok = load_model(run)
        row["run"] = {"steps": man["steps"]["done"], "stop_nll": last.get("forget_set_nll"),
                      "stop_reason": man["steps"]["stop_reason"], "FQ": ev["forget_quality"],
                      "truth_ratio": ev["forget_Truth_Ratio"], "gap": gap(unlearned, utok),
                      "watch_rise": last.get("watch_rise"),
                      "watch_max": max((e["watch_rise"] for e in man["log"] if "watch_rise" in e), default=None)}
        del unlearned
    oracle_eval, report = run_dir / "oracle-eval.json", run_dir / "report.json"  # smollm2_r2f_row.py's, the demo's
    if oracle_eval.is_file():
        row["oracle_truth_ratio"] = json.loads(oracle_eval.read_text())["summary"]["forget_Truth_Ratio"]
    elif report.is_file():
        runs = json.loads(report.read_text())["runs"]
        row["oracle_truth_ratio"] = runs["retrain"].get("summary", runs["retrain"]).get("forget_Truth_Ratio")
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="finished `r2f demo` (or smollm2_r2f_row.py) directories")
    ap.add_argument("--target", default="small", help="the target size these worlds were unlearned on")
    ap.add_argument("--run", default="r2f", help="the R2F run under DIR/runs/ to read the stop from")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the rows")
    add_record_flag(ap)
    args = ap.parse_args(argv)

    import torch

    from r2f.io import write_json_atomic
    from r2f.progress import quiet_hf_progress

    torch.set_num_threads(args.threads)
    quiet_hf_progress()
    rows = []
    for d in args.dirs:
        rows.append(one_world(d, args.target, args.run))
        write_json_atomic(args.out, rows)
        print(json.dumps(rows[-1]), flush=True)

    def ratio(row, key):
        return row[key] / row["oracle"]

    def watch(run: dict) -> str:
        """The run's watch rise at its stop / at most (nats/token); "–" for a run without a watch."""
        if run.get("watch_rise") is None:
            return "–"
        return f"{run['watch_rise']:+.3f} / {run['watch_max']:+.3f}"

    body = table(
        ["world", "target", "oracle NLL", "shuffled (÷ oracle)", "perturbed (÷)", "holdout (÷)",
         "R2F stop NLL (÷)", "steps", "FQ", "truth ratio (oracle)", "watch rise: stop / max",
         "gap: original / run / oracle"],
        [[r["seed"], r["target"], r["oracle"], f"{r['shuffled']:.3f} ({ratio(r, 'shuffled'):.2f})",
          f"{r['perturbed']:.2f} ({ratio(r, 'perturbed'):.1f})", f"{r['holdout']:.3f} ({ratio(r, 'holdout'):.2f})",
          *([f"{r['run']['stop_nll']:.3f} ({r['run']['stop_nll'] / r['oracle']:.2f})", r["run"]["steps"],
             r["run"]["FQ"], f"{r['run']['truth_ratio']:.3f} ({r.get('oracle_truth_ratio') or float('nan'):.3f})",
             watch(r["run"])]
            if "run" in r else ["–", "–", "–", "–", "–"]),
          f"{r['original_gap']:.2f} / {r['run']['gap']:.2f} / {r['oracle_gap']:.2f}" if "run" in r else
          f"{r['original_gap']:.2f} / – / {r['oracle_gap']:.2f}"] for r in rows])
    if not args.no_record:
        record(f"stop_thresholds_{args.target}", f"R2F's stop threshold against the retain oracle ({args.target})",
               body)
    print(body)


if __name__ == "__main__":
    main()
