"""Build report.json, report.md and a self-contained report.html from run results."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from r2f.errors import R2FInputError
from r2f.io import read_text, write_bytes_atomic, write_json_atomic, write_text_atomic
from r2f.report import plots

RUN_FILES = ("eval.json", "manifest.json", "fidelity.json")
#: Columns of the methods table, in order.
METHOD_COLUMNS = (
    "forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "forget_Truth_Ratio",
    "privleak", "extraction_strength", "relearn_forget_Q_A_ROUGE",
    "forget_known", "neighbour_known", "general_known", "heldout_ppl",  # realfacts (r2f demo --bench realfacts)
    "wall_s", "peak_mem_mb", "decoder_cos",
)  # fmt: skip
#: The realfacts columns: shares of known facts per split, and the held-out text's perplexity.
REALFACTS_COLUMNS = ("forget_known", "neighbour_known", "general_known", "heldout_ppl")
_HEADERS = {
    "forget_quality": "forget quality ↑", "model_utility": "model utility ↑", "forget_Q_A_ROUGE": "forget ROUGE-L ↓",
    "retain_Q_A_ROUGE": "retain ROUGE-L ↑", "forget_Truth_Ratio": "forget TR", "privleak": "privleak (→0)",
    "extraction_strength": "forget ES ↓", "relearn_forget_Q_A_ROUGE": "forget ROUGE-L after relearn ↓",
    "wall_s": "wall s", "peak_mem_mb": "peak MB", "decoder_cos": "decoder cos ↑",
    "forget_known": "forget known ↓", "neighbour_known": "neighbour known ↑", "general_known": "general known ↑",
    "heldout_ppl": "held-out ppl ↓",
}  # fmt: skip
#: One format per column, so that a column's numbers line up: p-values span decades (scientific), scores in
#: [0, 1] get 3 decimals, privleak (a percentage) and seconds 1, megabytes none.
COLUMN_FORMATS = {
    "forget_quality": ".2e", "model_utility": ".3f", "forget_Q_A_ROUGE": ".3f", "retain_Q_A_ROUGE": ".3f",
    "forget_Truth_Ratio": ".3f", "privleak": ".1f", "extraction_strength": ".3f", "relearn_forget_Q_A_ROUGE": ".3f",
    "wall_s": ".1f", "peak_mem_mb": ".0f", "decoder_cos": ".3f",
    "forget_known": ".3f", "neighbour_known": ".3f", "general_known": ".3f", "heldout_ppl": ".2f",
}  # fmt: skip
#: What every column of the report's tables means, keyed by its header; shown under each table.
DEFINITIONS = {
    "run": "The run's name: its directory (r2f report) or its row in r2f demo.",
    "method": "The unlearning method of the run. In the demo, original is the target before unlearning and retrain "
              "the retain oracle, a model trained without the forget set (the goal of unlearning).",
    "steps run": "Unlearning steps done / step budget; when the method's stop rule ended the run early, its reason.",
    "changes": "Which parameters the run changed, read from the weights (manifest changed_parameters): the module "
               "kinds, or all, and their share of the model's parameters.",
    "forget quality ↑": "KS-test p-value between this model's and the retain oracle's truth ratios on the forget "
                        "set: near 1, the two cannot be told apart; below 0.05 they can.",
    "forget quality": "As forget quality ↑, on the held-out half of the forget set.",
    "model utility ↑": "Harmonic mean of answer probability, ROUGE-L recall and truth ratio on the retain set and "
                       "on general world facts: what unlearning must not destroy.",
    "forget ROUGE-L ↓": "ROUGE-L recall of the model's greedy answers to forget questions against the true answers.",
    "retain ROUGE-L ↑": "ROUGE-L recall of the model's greedy answers to retain questions against the true answers.",
    "forget ROUGE-L": "As forget ROUGE-L ↓, on the held-out half of the forget set.",
    "forget TR": "Forget truth ratio: mean over forget items of min(r, 1/r), r = probability of wrong answers / "
                 "probability of the true answer (geometric means). Compare it with the retain oracle's.",
    "forget Prob": "Mean probability the model gives the true forget answers (per-token geometric mean).",
    "privleak (→0)": "Min-K% membership-inference AUC (forget vs held-out authors) relative to the retain oracle's, "
                     "in %: 0 is ideal, negative means still memorised, positive over-unlearned.",
    "forget ES ↓": "Extraction strength on the forget set: the fraction of each answer the model reproduces "
                   "token by token once given a prefix (1 - k/|y|); 0 means nothing extractable.",
    "forget ROUGE-L after relearn ↓": "Forget ROUGE-L on the held-out half of the forget set after a relearning "
                                      "attack: a copy fine-tuned on the other half.",
    "wall s": "Wall-clock seconds of the unlearning run (load, unlearn, save); the evaluation is not included.",
    "peak MB": "Peak memory of the unlearning run in MB (process RSS on CPU, allocated memory on a GPU).",
    "decoder cos ↑": "Mean cosine between the decoder's full-gradient estimate and the exact gradient over the "
                     "probed modules (1 for exact gradients).",
    "decoder": "Gradient decoder: learned (trained on a proxy) or a built-in estimator (sketch, ls, lora, sigma).",
    "cos mean ↑": "Cosine of the decoder's estimate with the exact gradient, averaged over modules.",
    "cos unobserved ↑": "The same cosine on the block of each gradient that the probes do not observe.",
    "rel. error ↓": "Relative Frobenius error of the estimate, ||G_est - G|| / ||G||, averaged over modules.",
    "relearn steps": "Fine-tuning steps of the relearning attack.",
    "forget known ↓": "realfacts: share of the forget facts whose true answer still has the lowest mean "
                      "answer-token NLL among it and its wrong candidates (chance 0.2 with 4 candidates).",
    "neighbour known ↑": "realfacts: the same share on the neighbour facts (same relations, other countries).",
    "general known ↑": "realfacts: the same share on the general facts (other relations: elements, books, ...).",
    "held-out ppl ↓": "realfacts: perplexity of the shipped held-out generic prose (never trained on).",
}  # fmt: skip
#: The headline criterion: forget quality at or above this p-value (the retain oracle cannot be told apart) ...
FQ_MIN = 0.05
#: ... while keeping at least this fraction of the original model's utility.
MU_RATIO = 0.9
#: The realfacts headline: forget known at most this share, neighbour and general known at least KEEP_RATIO of the
#: original's, held-out perplexity at most PPL_RATIO of the original's.
KNOWN_MAX, KEEP_RATIO, PPL_RATIO = 0.2, 0.9, 1.1


# ----------------------------------------------------------------------------- reading runs
def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise R2FInputError(f"malformed JSON: {exc.msg}", source=f"{path}:{exc.lineno}") from None


def load_run(run_dir: str | os.PathLike) -> dict:
    """``{"eval", "manifest", "fidelity"}`` (those present) from a run directory; R2FInputError if none."""
    d = Path(run_dir)
    if not d.is_dir():
        raise R2FInputError("run directory not found", source=str(d))
    run = {}
    for fname in RUN_FILES:
        p = d / fname
        if p.is_file():
            obj = _read_json(p)
            if not isinstance(obj, dict):
                raise R2FInputError("expected a JSON object", source=str(p))
            run[fname.split(".")[0]] = obj
    if not run:
        raise R2FInputError(f"none of {', '.join(RUN_FILES)} found", source=str(d))
    return run


def load_runs(run_dirs: list[str | os.PathLike]) -> dict[str, dict]:
    """Runs keyed by directory name (made unique with the parent's name or a counter)."""
    runs: dict[str, dict] = {}
    for rd in run_dirs:
        p = Path(rd).resolve()
        name = p.name
        if name in runs:
            name = f"{p.parent.name}/{p.name}"
        base, i = name, 2
        while name in runs:
            name, i = f"{base}#{i}", i + 1
        runs[name] = load_run(p)
    return runs


# ----------------------------------------------------------------------------- summarising
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else None


def eval_summary(ev: dict | None) -> dict[str, Any]:
    """Aggregate values of an eval.json (ours, OpenUnlearning's TOFU_EVAL/SUMMARY, or a flat dict)."""
    if not ev:
        return {}
    if isinstance(ev.get("summary"), dict):
        return dict(ev["summary"])
    out = {}
    for k, v in ev.items():
        if isinstance(v, dict) and "agg_value" in v:
            out[k] = v["agg_value"]
        elif _num(v) is not None:
            out[k] = v
    return out


def _decoder_cos(run: dict) -> float | None:
    fid = run.get("fidelity")
    if not isinstance(fid, dict) or not fid:
        return None
    cfg = (run.get("manifest") or {}).get("config") or {}
    wanted = cfg.get("decoder") if isinstance(cfg, dict) else None
    if isinstance(wanted, str):
        for key in (wanted, Path(wanted).stem):
            if isinstance(fid.get(key), dict):
                return _num(fid[key].get("cos_mean"))
        if wanted.endswith(".safetensors") and isinstance(fid.get("learned"), dict):
            return _num(fid["learned"].get("cos_mean"))
    for key in ("learned", *fid.keys()):
        if isinstance(fid.get(key), dict) and _num(fid[key].get("cos_mean")) is not None:
            return _num(fid[key]["cos_mean"])
    return None


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def method_row(name: str, run: dict) -> dict[str, Any]:
    s = eval_summary(run.get("eval"))
    man = run.get("manifest") or {}
    cost = man.get("cost") or run.get("cost") or {}
    relearn = (run.get("eval") or {}).get("relearn") or {}
    steps = man.get("steps") if isinstance(man.get("steps"), dict) else {}
    row = {"method": man.get("method") or run.get("method") or name}
    row["steps_done"], row["steps_budget"] = _count(steps.get("done")), _count(steps.get("budget"))
    row["stop_reason"] = steps.get("stop_reason") if isinstance(steps.get("stop_reason"), str) else None
    row["changes"] = changes_cell(man.get("changed_parameters"))
    for col in ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "forget_Truth_Ratio", "privleak", "extraction_strength"):
        row[col] = _num(s.get(col))
    row.update({col: _num(s[col]) for col in REALFACTS_COLUMNS if col in s})  # realfacts rows only
    row["relearn_forget_Q_A_ROUGE"] = _num((relearn.get("after") or {}).get("forget_Q_A_ROUGE"))
    row["wall_s"] = _num(cost.get("wall_s", run.get("wall_s")))
    row["peak_mem_mb"] = _num(cost.get("peak_mem_mb", run.get("peak_mem_mb")))
    row["decoder_cos"] = _num(run.get("decoder_cos")) if run.get("decoder_cos") is not None else _decoder_cos(run)
    return row


def _fidelity_summary(fid: dict) -> dict[str, dict]:
    return {d: {k: _num(v.get(k)) for k in ("cos_mean", "cos_unobserved_mean", "rel_err_mean")} for d, v in fid.items() if isinstance(v, dict) and "cos_mean" in v}


def _original(methods: dict[str, dict]) -> dict:
    return next((m for n, m in methods.items() if "original" in (n, m.get("method"))), {})


def realfacts_checks(row: dict, original: dict) -> dict[str, bool | None]:
    """The realfacts criteria for one row against the original's: None where a number is missing."""
    def ratio_check(col: str, bound: float, at_most: bool) -> bool | None:
        v, base = _num(row.get(col)), _num(original.get(col))
        if v is None or base is None:
            return None
        return v <= bound * base if at_most else v >= bound * base

    known = _num(row.get("forget_known"))
    return {"forget": None if known is None else known <= KNOWN_MAX,
            "neighbour": ratio_check("neighbour_known", KEEP_RATIO, False),
            "general": ratio_check("general_known", KEEP_RATIO, False),
            "heldout_ppl": ratio_check("heldout_ppl", PPL_RATIO, True)}


def realfacts_headline(methods: dict[str, dict], unlearned: list[str]) -> dict[str, Any]:
    """Which of the ``unlearned`` runs meet every :func:`realfacts_checks` criterion against ``original``."""
    original = _original(methods)
    checks = {n: realfacts_checks(methods[n], original) for n in unlearned}
    meeting = [n for n in unlearned if all(checks[n].values())]
    text = (f"Methods meeting forget known ≤ {KNOWN_MAX:g} with neighbour and general known ≥ {KEEP_RATIO:g}× and "
            f"held-out perplexity ≤ {PPL_RATIO:g}× the original's: {', '.join(meeting) or 'none'}.")
    if not original:
        text += " (No 'original' run: only forget known is checked.)"
    return {"text": text, "methods": meeting, "known_max": KNOWN_MAX, "keep_ratio": KEEP_RATIO,
            "ppl_ratio": PPL_RATIO, "checks": checks}


def headline(methods: dict[str, dict], unlearned: list[str]) -> dict[str, Any]:
    """Which of the ``unlearned`` runs reach forget quality ``FQ_MIN`` while keeping ``MU_RATIO`` of the utility of
    the run named (or whose method is) ``original``; without such a run, utility is not compared. Realfacts runs
    (known shares, no forget quality) get :func:`realfacts_headline`."""
    if not any(_num(m.get("forget_quality")) is not None for m in methods.values()) and \
            any(_num(m.get("forget_known")) is not None for m in methods.values()):
        return realfacts_headline(methods, unlearned)
    original = _original(methods)
    base = _num(original.get("model_utility"))
    mu_min = MU_RATIO * base if base is not None else None
    meeting = [n for n in unlearned if (_num(methods[n].get("forget_quality")) or 0.0) >= FQ_MIN
               and (mu_min is None or (_num(methods[n].get("model_utility")) or 0.0) >= mu_min)]
    found = ", ".join(meeting) or "none"
    if mu_min is None:
        text = f"Methods meeting FQ ≥ {FQ_MIN:g}: {found} (no 'original' run, so utility is not compared)."
    else:
        text = (f"Methods meeting FQ ≥ {FQ_MIN:g} at ≥ {MU_RATIO:g}× the original's utility "
                f"(MU ≥ {mu_min:.3f}): {found}.")
    return {"text": text, "methods": meeting, "fq_min": FQ_MIN, "mu_ratio": MU_RATIO, "mu_min": mu_min}


# ----------------------------------------------------------------------------- formatting
def format_value(column: str, v: Any) -> str:
    """A methods-table value in its column's format (:data:`COLUMN_FORMATS`); "—" when missing."""
    x = _num(v)
    if x is None:
        return "—"
    return format(x, COLUMN_FORMATS[column]) if column in COLUMN_FORMATS else _fmt(x)


def changes_cell(changed: Any) -> str | None:
    """The "changes" cell: which parameters the run changed (share of parameters; module kinds, or "all")."""
    if not isinstance(changed, dict) or not _count(changed.get("of_params")):
        return None
    share = f"{100 * changed['params'] / changed['of_params']:.0f} % of parameters"
    kinds, kept = changed.get("kinds") or [], changed.get("unchanged_kinds") or []
    if not kinds:
        return "none"
    return f"all ({share})" if not kept else f"{', '.join(kinds)} ({share})"


def steps_run(row: dict) -> str:
    """The steps-run cell: done/budget, and the reason when the method stopped early; "—" without a manifest."""
    done, budget, reason = row.get("steps_done"), row.get("steps_budget"), row.get("stop_reason")
    if done is None:
        return "—"
    cell = f"{done}/{budget}" if budget is not None else str(done)
    return f"{cell} ({reason})" if reason else cell


def _fmt(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.2e}"
    return f"{x:.4g}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (``|`` in cells escaped); shared by the report and ``r2f bench``'s bench.md."""
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #4C72B0;padding-bottom:.2em} h2{font-size:1.25em;margin-top:1.6em;color:#2b4a80}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em} th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#eef2f8} td:first-child,th:first-child{text-align:left} tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0} .note{color:#666;font-size:.85em}
.headline{font-weight:600;background:#eef2f8;border-left:4px solid #4C72B0;padding:.5em .8em}
dl.defs{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.82em;color:#444;margin:.4em 0 1em}
dl.defs dt{font-weight:600} dl.defs dd{margin:0}
"""


# ----------------------------------------------------------------------------- the report
def build_report(runs: dict[str, dict], out_dir: str | os.PathLike, *, title: str = "r2f unlearning report",
                 notes: Sequence[str] = ()) -> dict:
    """Write ``report.json``, ``report.md`` and a self-contained ``report.html`` (+ ``figures/*.png``) to ``out_dir``.

    ``runs``: ``{name: {"eval": eval.json dict (or a flat {metric: value} dict), "manifest": {"method",
    "config", "log": [per-step dicts], "cost": {"wall_s", "peak_mem_mb"}}, "fidelity": fidelity.json dict}}``,
    any part optional; ``wall_s``/``peak_mem_mb``/``decoder_cos`` may also be given at the top of a run.
    Returns the report.json dict, whose ``methods`` table is ``{name: {forget_quality, model_utility,
    forget_Q_A_ROUGE, retain_Q_A_ROUGE, privleak, wall_s, peak_mem_mb, decoder_cos, steps_done, steps_budget,
    stop_reason, ...}}`` and whose ``headline`` is :func:`headline` of the runs with a manifest (unlearning runs).
    ``notes``: sentences shown under the headline (the demo's says which configuration each row ran).
    """
    if not isinstance(runs, dict) or not runs:
        raise R2FInputError("no runs to report", source="runs")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise R2FInputError("--out exists and is not a directory", source=str(out))

    methods = {name: method_row(name, run) for name, run in runs.items()}
    unlearned = [name for name, run in runs.items() if run.get("manifest")]  # the oracles have no manifest
    logs = {name: [r for r in ((run.get("manifest") or {}).get("log") or []) if isinstance(r, dict)] for name, run in runs.items()}
    logs = {k: v for k, v in logs.items() if v}
    fidelities = {name: run["fidelity"] for name, run in runs.items() if isinstance(run.get("fidelity"), dict) and run["fidelity"]}

    figures: dict[str, tuple[str, bytes]] = {}
    colors = plots.run_colors(list(runs))
    for key, caption, png in (
        ("fq_vs_mu", "Forget quality vs model utility per method (the retain oracle sits at forget quality 1).", plots.fq_vs_mu(methods, colors)),
        ("known", "realfacts: share of facts whose true answer ranks first, per split and method (the dashed line: chance, 0.2).", plots.known_shares(methods, colors)),
        ("steps", "Metrics per unlearning step, from each run's manifest log.", plots.steps(logs, colors=colors) if logs else None),
        ("cost", "Cost per method: wall time and peak memory.", plots.cost(methods, colors)),
    ):
        if png:
            figures[key] = (caption, png)
    # one heatmap per distinct fidelity file (runs often share one)
    seen: dict[str, str] = {}
    for name, fid in fidelities.items():
        sig = json.dumps(fid, sort_keys=True, default=str)
        if sig in seen:
            continue
        seen[sig] = name
        png = plots.fidelity_heatmap(fid, title=name if len(fidelities) > 1 else "")
        if png:
            key = "fidelity" if not any(k.startswith("fidelity") for k in figures) else f"fidelity_{len(seen)}"
            figures[key] = (f"Per-module gradient fidelity ({name}): cosine of each decoder's estimate with the exact gradient, overall and on the unobserved block.", png)

    report = {
        "title": title,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "headline": headline(methods, unlearned),
        "notes": list(notes),
        "methods": methods,
        "runs": {
            name: {
                "summary": eval_summary(run.get("eval")),
                "meta": (run.get("eval") or {}).get("meta"),
                "relearn": (run.get("eval") or {}).get("relearn"),
                "method": (run.get("manifest") or {}).get("method"),
                "config": (run.get("manifest") or {}).get("config"),
                "cost": (run.get("manifest") or {}).get("cost"),
                "log": (run.get("manifest") or {}).get("log"),
                "fidelity": run.get("fidelity"),
                "fidelity_summary": _fidelity_summary(run["fidelity"]) if name in fidelities else None,
            }
            for name, run in runs.items()
        },
        "figures": {k: f"figures/{k}.png" for k in figures},
    }

    out.mkdir(parents=True, exist_ok=True)
    for key, (_, png) in figures.items():
        write_bytes_atomic(out / "figures" / f"{key}.png", png)
    write_json_atomic(out / "report.json", _sanitize(report))
    write_text_atomic(out / "report.md", _markdown(report, figures))
    write_text_atomic(out / "report.html", _html(report, figures))
    return report


def _sanitize(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _sanitize(obj.item())
    return obj


def _sections(report: dict) -> list[tuple[str, list[str], list[list[str]], str, list[tuple[str, str]]]]:
    """(title, header, rows, note, definitions) of each table, shared by markdown and HTML. The definitions are
    those of the table's columns not defined under an earlier table."""
    methods = report["methods"]
    cols = [c for c in METHOD_COLUMNS if any(m.get(c) is not None for m in methods.values())]
    sections = [(
        "Methods", ["run", "method", "steps run", "changes"] + [_HEADERS[c] for c in cols],
        [[n, str(m.get("method")), steps_run(m), m.get("changes") or "—"] + [format_value(c, m.get(c)) for c in cols]
         for n, m in methods.items()],
        "↑ higher is better, ↓ lower is better. Exact definitions: docs/metrics.md.",
    )]  # fmt: skip
    fid_rows = []
    for name, r in report["runs"].items():
        for dec, v in (r.get("fidelity_summary") or {}).items():
            fid_rows.append([name, dec, _fmt(v["cos_mean"]), _fmt(v["cos_unobserved_mean"]), _fmt(v["rel_err_mean"])])
    if fid_rows:
        sections.append(("Gradient fidelity", ["run", "decoder", "cos mean ↑", "cos unobserved ↑", "rel. error ↓"], fid_rows,
                         "Cosine and relative error of each decoder's full-gradient estimate against the exact gradient, averaged over modules."))
    rl_rows = []
    for name, r in report["runs"].items():
        rl = r.get("relearn") or {}
        if rl.get("before") and rl.get("after"):
            b, a = rl["before"], rl["after"]
            rl_rows.append([name, str(rl.get("steps"))] + [f"{_fmt(b.get(k))} → {_fmt(a.get(k))}" for k in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_Truth_Ratio", "forget_quality")])
    if rl_rows:
        sections.append(("Relearning attack", ["run", "relearn steps", "forget Prob", "forget ROUGE-L", "forget TR", "forget quality"], rl_rows,
                         "Fine-tuning a copy on half of the forget split; metrics on the other half, before → after."))
    seen: set[str] = set()
    out = []
    for title, header, rows, note in sections:
        out.append((title, header, rows, note, [(h, DEFINITIONS[h]) for h in header if h not in seen]))
        seen.update(header)
    return out


def _markdown(report: dict, figures: dict) -> str:
    lines = [f"# {report['title']}", "", f"_Generated {report['created']} by r2f._", "",
             f"**{report['headline']['text']}**", ""]
    lines += [line for note in report.get("notes", []) for line in (note, "")]
    for title, header, rows, note, defs in _sections(report):
        lines += [f"## {title}", "", md_table(header, rows), "", note, ""]
        lines += [f"- **{term}**: {meaning}" for term, meaning in defs] + [""]
    if figures:
        lines += ["## Figures", ""]
        for key, (caption, _) in figures.items():
            lines += [f"![{key}](figures/{key}.png)", "", caption, ""]
    return "\n".join(lines)


def _html(report: dict, figures: dict) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(report['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report['title'])}</h1><p class='note'>Generated {html.escape(report['created'])} by r2f. "
        "Self-contained: every figure is embedded.</p>",
        f"<p class='headline'>{html.escape(report['headline']['text'])}</p>",
        *(f"<p>{html.escape(note)}</p>" for note in report.get("notes", [])),
    ]
    for title, header, rows, note, defs in _sections(report):
        terms = "".join(f"<dt>{html.escape(term)}</dt><dd>{html.escape(meaning)}</dd>" for term, meaning in defs)
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows), f"<p class='note'>{html.escape(note)}</p>",
                  f"<dl class='defs'>{terms}</dl>"]
    titles = {"fq_vs_mu": "Forget quality vs model utility", "known": "Facts known per split",
              "steps": "Metrics per unlearning step", "cost": "Cost per method"}
    for key, (caption, png) in figures.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts += [f"<h2>{html.escape(titles.get(key, 'Per-module gradient fidelity'))}</h2>",
                  f"<img alt='{html.escape(key)}' src='data:image/png;base64,{b64}'>", f"<p class='note'>{html.escape(caption)}</p>"]
    parts.append("</body></html>")
    return "\n".join(parts)
