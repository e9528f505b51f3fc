"""Documents as forget data, acceptance check (issue 18, item 1): unlearn the forget10 biographies.

Trains (cached) ``SIZE`` with the biographies (``r2f train --documents``): the ``full`` model and the retain oracle
(forget10 authors left out, QA and biographies), runs ``r2f unlearn`` with each method's defaults on
``WORLD/documents/forget10.jsonl --forget-kind documents`` (retain file ``WORLD/retain90.jsonl``; R2F with the
demo's learned decoder for the world, or ``--decoder``; ``-o`` options and a ``--tag`` for runs beside the defaults),
and measures the document metrics of every model (``r2f eval --documents forget10``: verbatim extraction ROUGE-L of the forget10,
retain90 and holdout biographies, loss MIA AUC). Criterion: forget extraction <= the oracle's + 0.1, retain
extraction >= 0.9x the original's. Results go to ``OUT/results.json`` and a markdown table on stdout.

    python benchmarks/documents_acceptance.py --world /tmp/w/world --out /tmp/w/docs-accept r2f npo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import r2f
    from r2f.commands.unlearn import _parse_options
    from r2f.data.world import WorldConfig, write_world
    from r2f.demo import DemoConfig, _cached_decoder
    from r2f.io import write_json_atomic
    from r2f.models.training import train_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("methods", nargs="*", default=["r2f", "npo"])
    ap.add_argument("--world", type=Path, required=True, help="world directory (written with seed 0 if missing)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", default="small")
    ap.add_argument("--decoder", default=None,
                    help="R2F's decoder (default: the demo's learned decoder for this world, trained once and cached, "
                         "not the machine's default decoder, which any other decoder training may have replaced)")
    ap.add_argument("--option", "-o", action="append", default=[], help="method option key=value (repeatable)")
    ap.add_argument("--tag", default="", help="suffix of the run names (runs with other options beside the defaults)")
    ap.add_argument("--retain-docs", action="store_true",
                    help="also run each method with the retain90 biographies as retain data (--retain-kind documents), "
                         "as rows METHOD[TAG]-retaindocs")
    args = ap.parse_args(argv)
    if not (args.world / "world.json").is_file():
        write_world(args.world, WorldConfig(seed=0))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = {"original": train_model(args.world, size=args.size, split="full", documents=True),
              "retain oracle": train_model(args.world, size=args.size, split="retain", documents=True)}
    timings = {"train_s": round(time.perf_counter() - t0, 1)}
    options = _parse_options(args.option)
    decoder = args.decoder
    if decoder is None and "r2f" in args.methods:
        seed = json.loads((args.world / "world.json").read_text())["config"]["seed"]
        proxy = train_model(args.world, size="proxy", seed=seed)
        decoder = str(_cached_decoder((proxy,), args.world, DemoConfig(target=args.size, seed=seed), "batch"))
    manifests = {}
    runs = [(m + args.tag, m, args.world / "retain90.jsonl", "qa") for m in args.methods]
    if args.retain_docs:
        runs += [(f"{m}{args.tag}-retaindocs", m, args.world / "documents" / "retain90.jsonl", "documents")
                 for m in args.methods]
    for name, method, retain, retain_kind in runs:
        out = args.out / name
        if not (out / "manifest.json").is_file():
            r2f.unlearn(str(models["original"]), args.world / "documents" / "forget10.jsonl", retain, method=method,
                        forget_kind="documents", retain_kind=retain_kind, out=out, overwrite=True,
                        **({"decoder": decoder} if method == "r2f" else {}), **options)
        manifests[name] = json.loads((out / "manifest.json").read_text())
        models[name] = out
    rows = {}
    for name, path in models.items():
        cache = args.out / f"eval-{name.replace(' ', '_')}.json"
        if cache.is_file():
            ev = json.loads(cache.read_text())
        else:
            ev = r2f.evaluate(str(path), args.world, documents="forget10", metrics=[])
            write_json_atomic(cache, ev)
        rows[name] = {k: ev["summary"][k] for k in ("doc_forget_extraction", "doc_retain_extraction",
                                                     "doc_holdout_extraction", "doc_mia_loss")}
    oracle, original = rows["retain oracle"], rows["original"]
    for name in manifests:
        r = rows[name]
        m = manifests[name]
        r.update(forget_ok=r["doc_forget_extraction"] <= oracle["doc_forget_extraction"] + 0.1,
                 retain_ok=r["doc_retain_extraction"] >= 0.9 * original["doc_retain_extraction"],
                 steps=f"{m['steps']['done']}/{m['steps']['budget']}", stop_reason=m["steps"]["stop_reason"],
                 wall_s=m["cost"]["wall_s"], retain=m["data"]["retain"]["path"])
    result = {"world": str(args.world), "size": args.size, "models": {k: str(v) for k, v in models.items()},
              "decoder": decoder, "options": options,
              "rows": rows, **timings}
    write_json_atomic(args.out / "results.json", result)
    print("| model | forget10 extraction | retain90 extraction | holdout extraction | loss MIA AUC | forget ≤ oracle+0.1 "
          "| retain ≥ 0.9× original | steps | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        checks = [("yes" if r[k] else "**no**") if k in r else "" for k in ("forget_ok", "retain_ok")]
        print(f"| {name} | {r['doc_forget_extraction']:.3f} | {r['doc_retain_extraction']:.3f} | "
              f"{r['doc_holdout_extraction']:.3f} | {r['doc_mia_loss']:.3f} | {checks[0]} | {checks[1]} | "
              f"{r.get('steps', '')} | {format(r['wall_s'], '.1f') if 'wall_s' in r else ''} |")


if __name__ == "__main__":
    main()
