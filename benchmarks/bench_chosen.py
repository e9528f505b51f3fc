#!/usr/bin/env python
"""Write ``src/r2f/bench_chosen.json``, the baselines' configurations that ``r2f demo`` runs, from a bench.json.

After a full ``r2f bench --out DIR`` (docs/bench.md), ship its choices with the package:

    python benchmarks/bench_chosen.py DIR/bench.json --command "r2f bench --out DIR"

The file records which run produced it (the command, the bench.json path, the run's date and protocol) and, for
every baseline the bench tuned, the chosen ``label``, ``lr_scale``, ``options`` and which branch of the selection
rule chose it. The R2F rows are not written: the demo runs R2F's defaults. Bad input exits 2 with one line.

Methods added after the full run are benched on their own with the same protocol and added to the shipped file:

    r2f bench --methods rmu,wga --out DIR2
    python benchmarks/bench_chosen.py DIR2/bench.json --command "r2f bench --methods rmu,wga --out DIR2" --add

(``--add`` refuses a run whose protocol differs from the shipped one; ``r2f.bench.merge_chosen``.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

SHIPPED = Path(__file__).resolve().parent.parent / "src" / "r2f" / "bench_chosen.json"


def main(argv: list[str] | None = None) -> int:
    from r2f.bench import chosen_record, merge_chosen
    from r2f.errors import R2FInputError
    from r2f.io import read_text, write_text_atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json", type=Path, help="bench.json of a finished r2f bench run")
    ap.add_argument("--command", required=True, help="the r2f bench command line that produced it (recorded)")
    ap.add_argument("--date", default=None, help="the run's date, YYYY-MM-DD (default: bench.json's 'created', "
                                                 "else the file's modification day)")
    ap.add_argument("--note", default=None, help="a sentence recorded with the source, e.g. how that run "
                                                 "differs from the current protocol")
    ap.add_argument("--out", type=Path, default=SHIPPED, help=f"where to write (default {SHIPPED})")
    ap.add_argument("--add", action="store_true", help="add this run's baselines to the file at --out (same "
                                                       "protocol required) instead of replacing it")
    args = ap.parse_args(argv)
    try:
        try:
            result = json.loads(read_text(args.bench_json))
        except json.JSONDecodeError as exc:
            raise R2FInputError(f"malformed JSON: {exc.msg}", source=f"{args.bench_json}:{exc.lineno}") from None
        if not isinstance(result, dict):
            raise R2FInputError("expected a JSON object (a bench.json)", source=str(args.bench_json))
        # bench.json records 'created' since this file exists; older runs are dated by their file
        date = args.date or (None if result.get("created") else _mtime_day(args.bench_json))
        record = chosen_record(result, command=args.command, bench_json=str(args.bench_json), date=date,
                               note=args.note)
        if args.add:
            record = merge_chosen(json.loads(read_text(args.out)), record)
    except R2FInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(args.out, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: " + ", ".join(f"{n} {c['label']}" for n, c in record["baselines"].items()))
    return 0


def _mtime_day(path: Path) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()


if __name__ == "__main__":
    sys.exit(main())
