"""Sequential deletion requests through ``r2f ledger``: does every earlier request stay forgotten, and what is
left of utility after the tenth? (issue 18, item 3)

Builds ``--requests`` forget01-sized requests (one target author each, all the author's items; request 1 is
forget01 itself, the next ones the following target authors in world order) and applies them one after another
to the ``--size`` target with ``--method`` through :func:`r2f.ledger.apply`. Every request gets as retain data
what a deployment has at hand when it arrives: the target authors not asked for so far plus the retain half of
the world facts (the demo's rule). Each entry's verification record measures (ROUGE-L recall of greedy answers,
answer NLL) this request and every earlier one, and three fixed files:

* ``unnamed_authors.jsonl``: target authors that no request of the sequence names (utility);
* ``world_facts_eval.jsonl``: the half of the world facts no method is shown (utility);
* ``holdout.jsonl``: authors the model never saw (the reference: forgotten ≈ never seen).

After each request it writes ``OUT/sequence.json`` (every earlier request's forget ROUGE and the utility ROUGE
so far) and ``OUT/ledger/report.html`` (the curves). At the end it checks issue 18's acceptance: each request's
forget ROUGE ≤ the original's holdout ROUGE + 0.1, unnamed-author and world-fact ROUGE ≥ 0.85× the original's,
``r2f ledger verify`` passes, and one changed byte in a model version or a request file (on a copy) fails it
naming the entry. ``--method`` is a demo method name (r2f, rmu, wga, npo, ...): baselines run the configuration
``r2f bench`` chose, R2F its defaults with the demo's learned decoder (trained once, cached).

    .venv/bin/python benchmarks/ledger_sequence.py --out runs/ledger_r2f                       # 10 requests, small
    .venv/bin/python benchmarks/ledger_sequence.py --out runs/ledger_rmu --method rmu
    .venv/bin/python benchmarks/ledger_sequence.py --out /tmp/lseq --size tiny --requests 2 --no-record

Re-running with the same ``--out`` continues the sequence from the ledger's last entry (an interrupted apply
inside it resumes from its checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402

FORGET_MARGIN = 0.1   # forget ROUGE ≤ holdout ROUGE of the original + this
UTILITY_RATIO = 0.85  # utility ROUGE ≥ this × the original's


def jsonl(path: Path, items: list) -> Path:
    """Write QA items as the world's JSONL (r2f.data.world.jsonl_text), atomically."""
    from r2f.data.world import jsonl_text
    from r2f.io import write_text_atomic

    return write_text_atomic(path, jsonl_text([it.model_dump() for it in items]))


def build_requests(world: Path, n: int, out: Path) -> tuple[list[Path], list[Path], dict[str, Path]]:
    """(request files, retain file per request, fixed measured files) for ``n`` one-author requests."""
    from r2f.data.loader import WORLD_FACTS_EVAL, WORLD_FACTS_RETAIN, load_items, load_split

    target = load_items(world / "forget10.jsonl") + load_items(world / "retain90.jsonl")  # world order
    authors = list(dict.fromkeys(it.author for it in target))
    if not 1 <= n < len(authors):
        raise SystemExit(f"--requests must be between 1 and {len(authors) - 1} (this world has {len(authors)} "
                         "target authors)")
    named = authors[:n]
    facts_retain = load_split(world, WORLD_FACTS_RETAIN)
    requests, retains = [], []
    for k, author in enumerate(named, start=1):
        requests.append(jsonl(out / f"request_{k:02d}.jsonl", [it for it in target if it.author == author]))
        asked = set(named[:k])
        retains.append(jsonl(out / f"retain_{k:02d}.jsonl",
                             [it for it in target if it.author not in asked] + facts_retain))
    measured = {"unnamed": jsonl(out / "unnamed_authors.jsonl", [it for it in target if it.author not in named]),
                "world_facts": jsonl(out / "world_facts_eval.jsonl", load_split(world, WORLD_FACTS_EVAL)),
                "holdout": jsonl(out / "holdout.jsonl", load_items(world / "holdout.jsonl"))}
    return requests, retains, measured


def method_options(name: str, size: str, world: Path, seed: int) -> tuple[str, dict]:
    """The engine method and options of demo method ``name`` (the demo's learned decoder; bench-chosen config)."""
    from r2f.bench import chosen_overrides
    from r2f.demo import DEMO_METHODS, DemoConfig, _cached_decoder
    from r2f.models.training import train_model

    if name not in DEMO_METHODS:
        raise SystemExit(f"--method: unknown demo method '{name}' (choose from {', '.join(DEMO_METHODS)})")
    row = DEMO_METHODS[name]
    method, options = row.method, dict(row.options)
    cfg = DemoConfig(target="small" if size == "small" else "tiny", seed=seed)
    if row.proxy_decoder is not None:
        proxy = train_model(world, size="proxy", seed=seed)
        options["decoder"] = str(_cached_decoder((proxy,), world, cfg, row.proxy_decoder))
    options.update(chosen_overrides(name, size))
    if method in ("r2f", "exact"):
        options.setdefault("views", cfg.views)
    return method, options


def rouge(row: dict, when: str) -> float | None:
    return (row.get(when) or {}).get("rougeL_recall")


def summary(ledger: Path, measured: dict[str, Path]) -> dict:
    """Per entry: every request's forget ROUGE so far and each measured file's ROUGE; the original's too."""
    from r2f import ledger as lg

    recs = lg.entries(ledger)
    names = {p.name: key for key, p in measured.items()}
    rows = []
    for e in recs:
        v = e["verification"]
        forget = {str(r["entry"]): rouge(r, "after") for r in v["earlier"]}
        forget[str(e["index"])] = rouge(v["request"], "after")
        rows.append({"entry": e["index"], "authors": e["request"]["authors"], "forget_rouge": forget,
                     "forget_rouge_before": rouge(v["request"], "before"),
                     "measured_rouge": {names.get(r["name"], r["name"]): rouge(r, "after") for r in v["utility"]},
                     "verdict": lg.verdict_text(v["request"]), "not_forgotten": lg.relapsed_text(v),
                     "renewed": lg.entries_text(e.get("renewed") or []),
                     "steps_done": e["run"]["steps_done"], "stop_reason": e["run"]["stop_reason"],
                     "unlearn_s": (e["run"].get("cost") or {}).get("wall_s")})
    original = {names.get(r["name"], r["name"]): rouge(r, "before") for r in recs[0]["verification"]["utility"]} \
        if recs else {}
    return {"original": original, "entries": rows}


def tamper_check(ledger: Path) -> tuple[bool, str]:
    """On a copy: one changed byte in the last model version and one in the first request file must each make
    verify fail naming that entry."""
    from r2f import ledger as lg

    n = len(lg.entries(ledger))
    results = []
    with tempfile.TemporaryDirectory(prefix="r2f-ledger-tamper-") as tmp:
        for rel, entry in ((f"entries/{n:04d}/model/model.safetensors", n), ("entries/0001/request", 1)):
            copy = Path(tmp) / f"L{entry}"
            shutil.copytree(ledger, copy)
            target = copy / rel
            if target.is_dir():
                target = next(target.iterdir())
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0x01
            target.write_bytes(bytes(data))
            problems = lg.verify(copy)["problems"]
            results.append(bool(problems) and all(f"entry {entry} " in p for p in problems))
            shutil.rmtree(copy)
    return all(results), f"model byte in entry {n}, request byte in entry 1: " + \
        ", ".join("named" if ok else "NOT named" for ok in results)


def checks(ledger: Path, s: dict) -> list[tuple[str, bool, str]]:
    """Issue 18's acceptance on the sequence's last entry."""
    from r2f import ledger as lg

    out = []
    if not s["entries"]:
        return out
    last, orig = s["entries"][-1], s["original"]
    limit = (orig.get("holdout") or 0.0) + FORGET_MARGIN
    worst = max(v for v in last["forget_rouge"].values() if v is not None)
    out.append((f"every request's forget ROUGE ≤ holdout ROUGE of the original + {FORGET_MARGIN}", worst <= limit,
                f"max {worst:.3f} vs {limit:.3f} (per request: " +
                ", ".join(f"{k}: {v:.3f}" for k, v in last["forget_rouge"].items()) + ")"))
    for key in ("unnamed", "world_facts"):
        now, was = last["measured_rouge"].get(key), orig.get(key)
        if now is not None and was:
            out.append((f"{key} ROUGE ≥ {UTILITY_RATIO}× original", now >= UTILITY_RATIO * was,
                        f"{now:.3f} vs {was:.3f} ({now / was:.3f}×)"))
    state = lg.verify(ledger)
    out.append(("r2f ledger verify passes", state["ok"], "; ".join(state["problems"]) or f"head {state['head']}"))
    out.append(("one changed byte fails verify, naming the entry", *tamper_check(ledger)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work directory: world, request files, ledger/, sequence.json")
    ap.add_argument("--size", default="small", help="target ladder size (default small; tiny for a smoke run)")
    ap.add_argument("--requests", type=int, default=10, help="requests in the sequence (default 10)")
    ap.add_argument("--method", default="r2f", help="demo method name (default r2f)")
    ap.add_argument("--steps", type=int, default=None, help="step budget per request (default: the method's)")
    ap.add_argument("--seed", type=int, default=0, help="world and model seed (default 0)")
    ap.add_argument("--save-every", type=int, default=5, help="checkpoints per request run (resumable)")
    ap.add_argument("--option", "-o", action="append", default=[], help="method option key=value (repeatable)")
    ap.add_argument("--no-renew", dest="renew", action="store_false",
                    help="r2f ledger apply --no-renew: never forget earlier requests again")
    add_record_flag(ap)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from r2f import ledger as lg
    from r2f.commands.unlearn import _parse_options
    from r2f.data.world import WorldConfig, write_world
    from r2f.io import write_json_atomic
    from r2f.models.training import train_model

    out = Path(args.out)
    world = out / "world"
    if not (world / "world.json").is_file():
        write_world(world, WorldConfig(seed=args.seed))
    model = train_model(world, size=args.size, split="full", seed=args.seed)
    requests, retains, measured = build_requests(world, args.requests, out / "requests")
    method, options = method_options(args.method, args.size, world, args.seed)
    options.update(_parse_options(args.option))
    ledger = out / "ledger"
    if not (ledger / "ledger.json").is_file():
        lg.init(model, ledger)
    done = lg.entries(ledger)
    for k, e in enumerate(done):
        if e["request_sha256"] != lg.file_sha256(requests[k]):
            raise SystemExit(f"{ledger}: entry {k + 1} is not request {k + 1} of this sequence; use another --out")
    t0 = time.perf_counter()
    forget_lines: dict[str, float] = {}
    for k in range(len(done), args.requests):
        pending = lg.pending_dir(ledger)
        resume = pending.is_dir() and any(pending.iterdir())  # an interrupted apply of this request
        lg.apply(ledger, requests[k], method, retain=retains[k], utility=list(measured.values()), steps=args.steps,
                 seed=args.seed, save_every=args.save_every, resume=resume, renew=args.renew, **options)
        s = summary(ledger, measured)
        write_json_atomic(out / "sequence.json", s)
        forget_lines = {f"holdout (original) + {FORGET_MARGIN}": s["original"]["holdout"] + FORGET_MARGIN}
        last = s["entries"][-1]
        print(f"request {k + 1}/{args.requests} ({', '.join(last['authors'])}): {last['steps_done']} steps; forget "
              "ROUGE " + " ".join(f"{v:.2f}" for v in last["forget_rouge"].values()) + "; " +
              ", ".join(f"{n} {v:.3f}" for n, v in last["measured_rouge"].items()) +
              f"; forgotten: {last['verdict']}; earlier not forgotten: {last['not_forgotten']}"
              f"; forgot again: {last['renewed']}"
              f"; {time.perf_counter() - t0:.0f} s", flush=True)
        lg.write_report(ledger, forget_lines=forget_lines, title=f"{args.method} on {args.size}: sequential requests")
    s = summary(ledger, measured)
    results = checks(ledger, s)
    utility_lines = {f"{UTILITY_RATIO}× original {key}": UTILITY_RATIO * s["original"][key]
                     for key in ("unnamed", "world_facts") if s["original"].get(key)}
    forget_lines = {f"holdout (original) + {FORGET_MARGIN}": s["original"]["holdout"] + FORGET_MARGIN}
    report = lg.write_report(ledger, forget_lines=forget_lines, utility_lines=utility_lines, checks=results,
                             title=f"{args.method} on {args.size}: {args.requests} sequential requests")
    write_json_atomic(out / "sequence.json", {**s, "checks": [{"check": n, "pass": ok, "detail": d}
                                                              for n, ok, d in results]})
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"wrote {report} and {out / 'sequence.json'}")
    if not args.no_record:
        header = ["after request", "forget ROUGE (max over requests so far)", "unnamed authors ROUGE",
                  "world facts ROUGE", "steps", "unlearn s", "ledger verdict: this request",
                  "earlier requests not forgotten", "forgot again (renewal)"]
        rows = [["original", None, s["original"].get("unnamed"), s["original"].get("world_facts"), None, None,
                 None, None, None]]
        rows += [[r["entry"], max(v for v in r["forget_rouge"].values() if v is not None),
                  r["measured_rouge"].get("unnamed"), r["measured_rouge"].get("world_facts"), r["steps_done"],
                  r["unlearn_s"], r["verdict"], r["not_forgotten"], r["renewed"]] for r in s["entries"]]
        body = table(header, rows) + "\n\n" + "\n".join(f"- {'pass' if ok else 'FAIL'}: {n} ({d})"
                                                        for n, ok, d in results)
        record(f"ledger_sequence_{args.method}_{args.size}",
               f"Sequential deletion requests: {args.method} on {args.size}", body)


if __name__ == "__main__":
    main()
