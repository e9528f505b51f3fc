"""Build report.json, report.md and a self-contained report.html from run results."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
from pathlib import Path
from typing import Any

from r2f.errors import R2FInputError
from r2f.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from r2f.report import plots

RUN_FILES = ("eval.json", "manifest.json", "fidelity.json")
#: Columns of the methods table, in order.
METHOD_COLUMNS = (
    "forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "forget_Truth_Ratio",
    "privleak", "extraction_strength", "relearn_forget_Q_A_ROUGE", "wall_s", "peak_mem_mb", "decoder_cos",
)  # fmt: skip
_HEADERS = {
    "forget_quality": "forget quality ↑", "model_utility": "model utility ↑", "forget_Q_A_ROUGE": "forget ROUGE-L ↓",
    "retain_Q_A_ROUGE": "retain ROUGE-L ↑", "forget_Truth_Ratio": "forget TR", "privleak": "privleak (→0)",
    "extraction_strength": "forget ES ↓", "relearn_forget_Q_A_ROUGE": "forget ROUGE-L after relearn ↓",
    "wall_s": "wall s", "peak_mem_mb": "peak MB", "decoder_cos": "decoder cos ↑",
}  # fmt: skip


# ----------------------------------------------------------------------------- reading runs
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise R2FInputError(f"malformed JSON: {exc.msg}", source=f"{path}:{exc.lineno}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise R2FInputError(f"cannot read: {exc.__class__.__name__}", source=str(path)) from None


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


def method_row(name: str, run: dict) -> dict[str, Any]:
    s = eval_summary(run.get("eval"))
    man = run.get("manifest") or {}
    cost = man.get("cost") or run.get("cost") or {}
    relearn = (run.get("eval") or {}).get("relearn") or {}
    row = {"method": man.get("method") or run.get("method") or name}
    for col in ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "forget_Truth_Ratio", "privleak", "extraction_strength"):
        row[col] = _num(s.get(col))
    row["relearn_forget_Q_A_ROUGE"] = _num((relearn.get("after") or {}).get("forget_Q_A_ROUGE"))
    row["wall_s"] = _num(cost.get("wall_s", run.get("wall_s")))
    row["peak_mem_mb"] = _num(cost.get("peak_mem_mb", run.get("peak_mem_mb")))
    row["decoder_cos"] = _num(run.get("decoder_cos")) if run.get("decoder_cos") is not None else _decoder_cos(run)
    return row


def _fidelity_summary(fid: dict) -> dict[str, dict]:
    return {d: {k: _num(v.get(k)) for k in ("cos_mean", "cos_unobserved_mean", "rel_err_mean")} for d, v in fid.items() if isinstance(v, dict) and "cos_mean" in v}


# ----------------------------------------------------------------------------- formatting
def _fmt(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.2e}"
    return f"{x:.4g}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
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
"""


# ----------------------------------------------------------------------------- the report
def build_report(runs: dict[str, dict], out_dir: str | os.PathLike, *, title: str = "r2f unlearning report") -> dict:
    """Write ``report.json``, ``report.md`` and a self-contained ``report.html`` (+ ``figures/*.png``) to ``out_dir``.

    ``runs``: ``{name: {"eval": eval.json dict (or a flat {metric: value} dict), "manifest": {"method",
    "config", "log": [per-step dicts], "cost": {"wall_s", "peak_mem_mb"}}, "fidelity": fidelity.json dict}}``,
    any part optional; ``wall_s``/``peak_mem_mb``/``decoder_cos`` may also be given at the top of a run.
    Returns the report.json dict, whose ``methods`` table is ``{name: {forget_quality, model_utility,
    forget_Q_A_ROUGE, retain_Q_A_ROUGE, privleak, wall_s, peak_mem_mb, decoder_cos, ...}}``.
    """
    if not isinstance(runs, dict) or not runs:
        raise R2FInputError("no runs to report", source="runs")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise R2FInputError("--out exists and is not a directory", source=str(out))

    methods = {name: method_row(name, run) for name, run in runs.items()}
    logs = {name: [r for r in ((run.get("manifest") or {}).get("log") or []) if isinstance(r, dict)] for name, run in runs.items()}
    logs = {k: v for k, v in logs.items() if v}
    fidelities = {name: run["fidelity"] for name, run in runs.items() if isinstance(run.get("fidelity"), dict) and run["fidelity"]}

    figures: dict[str, tuple[str, bytes]] = {}
    colors = plots.run_colors(list(runs))
    for key, caption, png in (
        ("fq_vs_mu", "Forget quality vs model utility per method (the retain oracle sits at forget quality 1).", plots.fq_vs_mu(methods, colors)),
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


def _sections(report: dict) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) of each table, shared by markdown and HTML."""
    methods = report["methods"]
    cols = [c for c in METHOD_COLUMNS if any(m.get(c) is not None for m in methods.values())]
    sections = [(
        "Methods", ["run", "method"] + [_HEADERS[c] for c in cols],
        [[n, str(m.get("method"))] + [_fmt(m.get(c)) for c in cols] for n, m in methods.items()],
        "forget quality: KS p-value of forget truth ratios against the retain oracle; model utility: harmonic mean of "
        "Prob, ROUGE-L recall and Truth Ratio on retain and world facts; privleak: Min-K% AUC relative to the retain "
        "oracle (0 ideal, negative = still memorised). Definitions: docs/metrics.md.",
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
        sections.append(("Relearning attack", ["run", "steps", "forget Prob", "forget ROUGE-L", "forget TR", "forget quality"], rl_rows,
                         "Fine-tuning a copy on half of the forget split; metrics on the other half, before → after."))
    return sections


def _markdown(report: dict, figures: dict) -> str:
    lines = [f"# {report['title']}", "", f"_Generated {report['created']} by r2f._", ""]
    for title, header, rows, note in _sections(report):
        lines += [f"## {title}", "", _md_table(header, rows), "", note, ""]
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
    ]
    for title, header, rows, note in _sections(report):
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows), f"<p class='note'>{html.escape(note)}</p>"]
    titles = {"fq_vs_mu": "Forget quality vs model utility", "steps": "Metrics per unlearning step", "cost": "Cost per method"}
    for key, (caption, png) in figures.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts += [f"<h2>{html.escape(titles.get(key, 'Per-module gradient fidelity'))}</h2>",
                  f"<img alt='{html.escape(key)}' src='data:image/png;base64,{b64}'>", f"<p class='note'>{html.escape(caption)}</p>"]
    parts.append("</body></html>")
    return "\n".join(parts)
