"""R2F next to a competing CPU job: r2f's default thread choice against one thread and against every core.

Runs ``r2f unlearn --method r2f --steps 6`` on the ``small`` target (each run its own process), alone and next to
``--busy`` single-threaded busy loops, with three thread settings:

* ``default``: r2f's policy (r2f.threads: 1 thread for models under 50M parameters, else the free cores);
* ``--threads 1``;
* ``--threads C`` with C = torch's own default in a fresh process (what r2f used before it had a policy).

Runs alternate between the settings (``--repeats`` rounds), so drifts of the machine hit all settings alike.
Prints the median wall time of each (busy, setting) and the thread count and rule each run's manifest recorded.
Run it alone on the machine (other jobs make every number wrong):

    .venv/bin/python benchmarks/threads_busy.py                       # world, models, decoder built on first use
    .venv/bin/python benchmarks/threads_busy.py --decoder DEC.safetensors --repeats 3 --no-record

Models come from r2f's model cache (``$R2F_CACHE``, trained once); the decoder is trained into the work directory
and never becomes the machine's default decoder. OMP_NUM_THREADS is removed from the runs' environment (it would
override the policy).
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

BUSY_LOOP = "while True: pass"


def torch_default_threads(env: dict[str, str]) -> int:
    """torch's intra-op thread count in a fresh process (its default: the physical cores)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def prepare(work: Path, size: str, decoder: str | None) -> tuple[Path, Path, Path]:
    """(world directory, target model directory, decoder file)."""
    from r2f.data.world import WorldConfig, write_world
    from r2f.models.training import train_model

    world = work / "world"
    if not (world / "world.json").is_file():
        write_world(world, WorldConfig(seed=0))
    target = Path(train_model(world, size=size, split="full"))
    if decoder:
        return world, target, Path(decoder)
    dec_path = work / "decoder.safetensors"
    if not dec_path.is_file():
        from r2f.decoders.train import train_decoder

        proxy = train_model(world, size="proxy", split="full")
        train_decoder(proxy, world).save(dec_path)  # no out=: the default-decoder pointer stays where it is
    return world, target, dec_path


def run_once(target: Path, world: Path, decoder: Path, steps: int, threads: int | None, out: Path,
             env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "r2f", "unlearn", "--model", str(target), "--forget", str(world / "forget10.jsonl"),
           "--retain", str(world / "retain90.jsonl"), "--method", "r2f", "--decoder", str(decoder),
           "--steps", str(steps), "--out", str(out), "--overwrite"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return {"process_s": wall, "unlearn_s": man["cost"]["wall_s"], "threads": man["threads"]["threads"],
            "source": man["threads"]["source"], "steps_done": man["steps"]["done"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", help="target ladder size (default small)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the settings (default 2)")
    ap.add_argument("--busy", type=int, default=1, help="competing single-threaded busy loops (default 1)")
    ap.add_argument("--decoder", default=None, help="learned decoder file (default: train one into --work)")
    ap.add_argument("--work", default=None, help="directory for the world, decoder and runs (default: a temp dir)")
    ap.add_argument("--out", default="threads_busy.json")
    add_record_flag(ap)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(HF_HUB_OFFLINE="1", R2F_NO_PROGRESS="1")
    work = Path(args.work or tempfile.mkdtemp(prefix="r2f-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    world, target, decoder = prepare(work, args.size, args.decoder)
    all_cores = torch_default_threads(env)
    settings = {"default": None, "--threads 1": 1, f"--threads {all_cores} (torch default)": all_cores}
    results: dict[tuple[int, str], list[dict]] = {}
    for busy in (0, args.busy):
        loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            time.sleep(5 if busy else 0)  # let the load average see the competitor (r2f's policy reads it)
            for rnd in range(args.repeats):
                order = list(settings.items())
                order = order if rnd % 2 == 0 else order[::-1]
                for name, threads in order:
                    rec = run_once(target, world, decoder, args.steps, threads, work / "run", env)
                    results.setdefault((busy, name), []).append(rec)
                    print(f"busy={busy} {name:28s} {rec['process_s']:7.1f} s  threads={rec['threads']} "
                          f"({rec['source']})", flush=True)
        finally:
            for p in loops:
                p.terminate()
                p.wait()
    rows = []
    for (busy, name), recs in results.items():
        rows.append([busy, name, recs[0]["threads"], recs[0]["source"],
                     statistics.median(r["process_s"] for r in recs), statistics.median(r["unlearn_s"] for r in recs),
                     len(recs)])
    header = ["busy loops", "setting", "threads", "rule", "process s (median)", "unlearn s (median)", "runs"]
    print(table(header, rows))
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": [dict(zip(header, r)) for r in rows]},
                                         indent=2) + "\n", encoding="utf-8")
    if not args.no_record:
        body = (f"`r2f unlearn --method r2f --steps {args.steps}` on `{args.size}` (learned decoder), each run its own "
                f"process, alone and next to {args.busy} single-threaded busy loop(s); settings alternated over "
                f"{args.repeats} rounds.\n\n" + table(header, rows))
        record("threads_busy", "Threads next to a competing CPU job", body)


if __name__ == "__main__":
    main()
