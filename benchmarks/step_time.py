"""Time of one R2F step (and of the whole ``unlearn`` call) on a ladder target, for one or more source trees.

Each measurement is ``r2f.methods.unlearn(method="r2f", steps=N, seed=0)`` in a fresh process whose ``PYTHONPATH``
is the tree's ``src`` (so two versions of r2f, e.g. before and after a change, are timed by the same script on the
same world, target and decoder). The runs alternate between the trees, A/B/A/B over ``--rounds``, so drifts of a
shared machine hit every tree alike; the table gives the median over the rounds of

* ``step s``: the median ``wall_s`` of the manifest's step entries after the first (the first step pays one-off
  warm-ups);
* ``call s``: the whole ``unlearn`` call (loading, setup, steps, saving) measured around it;
* ``call CPU s``: the CPU time of that call (one torch thread: less sensitive than wall time to other jobs on
  the machine, which is why it is there);

and, with two or more trees, each tree's ratio to the first one's (measured side by side, the number to trust on a
noisy machine). It also counts, exactly, the work a run repeats (the same in every round): calls of the tokenizer,
reads of the forget, retain and decoder files (``Path.read_bytes`` and safetensors' ``load_file``). Examples::

    .venv/bin/python benchmarks/step_time.py                                   # this checkout alone
    .venv/bin/python benchmarks/step_time.py --tree before=/tmp/old/src --tree after=src --rounds 5

The target comes from r2f's model cache (``$R2F_CACHE``; trained on first use); the decoder is the machine's
learned decoder (``--decoder learned``, what ``r2f train-decoder`` or ``r2f demo`` last wrote) unless given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402

HERE = Path(__file__).resolve()


def prepare(work: Path, size: str) -> tuple[Path, Path]:
    """(world directory, target model directory): the seed-0 world and its ``full`` target (cached)."""
    from r2f.data.world import WorldConfig, write_world
    from r2f.models.training import train_model

    world = work / "world"
    if not (world / "world.json").is_file():
        write_world(world, WorldConfig(seed=0))
    return world, Path(train_model(world, size=size, split="full"))


def count_work(files: dict[str, str]) -> dict[str, int]:
    """Count, in this process, tokenizer calls and reads of ``files`` (label -> path); returns the live counters."""
    import safetensors.torch
    import transformers

    counts = {"tokenizer calls": 0, **{f"{label} reads": 0 for label in files}}
    by_path = {str(Path(p).resolve()): label for label, p in files.items()}

    def counted(fn, key_of):
        def wrapper(*a, **kw):
            key = key_of(*a, **kw)
            if key is not None:
                counts[key] += 1
            return fn(*a, **kw)
        return wrapper

    def file_key(path, *_, **__):
        label = by_path.get(str(Path(path).resolve()))
        return f"{label} reads" if label else None

    tok = transformers.PreTrainedTokenizerBase
    tok.__call__ = counted(tok.__call__, lambda *a, **kw: "tokenizer calls")
    Path.read_bytes = counted(Path.read_bytes, file_key)
    safetensors.torch.load_file = counted(safetensors.torch.load_file, file_key)
    return counts


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process (``--worker``): print a JSON line."""
    t_import = time.perf_counter()
    from r2f.decoders.api import default_decoder_path
    from r2f.methods import unlearn

    t_import = time.perf_counter() - t_import
    decoder = default_decoder_path() if args.decoder == "learned" else Path(args.decoder)
    counts = count_work({"forget": args.forget, "retain": args.retain, "decoder": str(decoder)})
    options = dict(json.loads(args.options))
    t0, c0 = time.perf_counter(), time.process_time()
    out = unlearn(args.model, args.forget, args.retain, method="r2f", decoder=args.decoder, out=args.out,
                  steps=args.steps, seed=0, overwrite=True, threads=args.threads, **options)
    call_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    man = json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))
    steps = [e["wall_s"] for e in man["log"]]
    print(json.dumps({"call_s": call_s, "cpu_s": cpu_s, "import_s": t_import, "counts": counts, "step_s": steps,
                      "stages": man["cost"]["stages"], "steps_done": man["steps"]["done"]}))


def run_tree(src: Path, args: argparse.Namespace, world: Path, target: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "R2F_NO_PROGRESS": "1"}
    cmd = [sys.executable, str(HERE), "--worker", "--model", str(target), "--forget", str(world / "forget10.jsonl"),
           "--retain", str(world / "retain90.jsonl"), "--decoder", args.decoder, "--steps", str(args.steps),
           "--threads", str(args.threads), "--options", json.dumps(args.option), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: the run failed:\n{proc.stderr[-3000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    later = rec["step_s"][1:] or rec["step_s"]
    rec["step_median_s"] = statistics.median(later)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=SRC",
                    help="a source tree to time (its src directory); repeat for A/B (default: this checkout)")
    ap.add_argument("--size", default="small", help="target ladder size (default small)")
    ap.add_argument("--steps", type=int, default=5, help="R2F steps per run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per tree, alternating between trees (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every run (default 1)")
    ap.add_argument("--decoder", default="learned", help="decoder (default: the machine's learned decoder)")
    ap.add_argument("-o", "--option", action="append", default=[], type=lambda s: s.split("=", 1),
                    metavar="KEY=VALUE", help="an R2F option (value parsed as JSON when possible)")
    ap.add_argument("--work", default=None, help="directory for the world and the runs (default: a temp dir)")
    ap.add_argument("--out", default="step_time.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--model", "--forget", "--retain", "--options"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    add_record_flag(ap)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    args.option = [[k, _value(v)] for k, v in args.option]
    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this checkout": str(HERE.parents[1] / "src")}
    work = Path(args.work or tempfile.mkdtemp(prefix="r2f-step-time-"))
    work.mkdir(parents=True, exist_ok=True)
    world, target = prepare(work, args.size)
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for rnd in range(args.rounds):
        for name, src in trees.items():  # A/B/A/B: every round runs every tree once, in the same order
            rec = run_tree(Path(src).resolve(), args, world, target, work / "run")
            runs[name].append(rec)
            print(f"round {rnd + 1} {name:>14}: step {rec['step_median_s']:.3f} s, call {rec['call_s']:.2f} s "
                  f"({rec['cpu_s']:.2f} s CPU), {rec['steps_done']} steps", flush=True)
    first = next(iter(trees))
    keys = {"step": "step_median_s", "call": "call_s", "cpu": "cpu_s"}
    med = {n: {k: statistics.median(r[key] for r in rs) for k, key in keys.items()} for n, rs in runs.items()}
    # ratios per round (side by side), then their median
    ratio = {n: {k: statistics.median(b[key] / a[key] for a, b in zip(runs[first], rs)) for k, key in keys.items()}
             for n, rs in runs.items()}
    header = ["tree", "step s (median)", "call s (median)", "call CPU s (median)", f"step ÷ {first}",
              f"call ÷ {first}", f"call CPU ÷ {first}", "steps", "runs"]
    rows = [[n, med[n]["step"], med[n]["call"], med[n]["cpu"], ratio[n]["step"], ratio[n]["call"], ratio[n]["cpu"],
             runs[n][0]["steps_done"], len(runs[n])] for n in trees]
    print(table(header, rows))
    count_keys = list(runs[first][0]["counts"])
    count_rows = [[n, *(runs[n][0]["counts"][k] for k in count_keys)] for n in trees]
    counts_table = table(["tree (one run)", *count_keys], count_rows)
    print(counts_table)
    Path(args.out).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "trees": trees,
                                          "runs": runs, "rows": [dict(zip(header, r)) for r in rows]},
                                         indent=2) + "\n", encoding="utf-8")
    if not args.no_record:
        opts = "".join(f" -o {k}={json.dumps(v)}" for k, v in args.option)
        body = (f"`unlearn(method='r2f', steps={args.steps}, seed=0, threads={args.threads}{opts})` on `{args.size}`, "
                f"forget10, retain90, decoder `{args.decoder}`; each run a fresh process, the trees alternated over "
                f"{args.rounds} rounds; ratios are the median of the per-round ratios.\n\n" + table(header, rows)
                + "\n\nWork counted in one run of each tree (the same in every round):\n\n" + counts_table)
        record("step_time", "One R2F step", body)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


if __name__ == "__main__":
    main()
