"""r2f report / build_report: files, tables, embedded figures, bad input, and a headless-Chromium screenshot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from r2f.errors import R2FInputError


def _eval(fq, mu, frouge, rrouge, pl, relearn=None):
    ev = {
        "meta": {"forget_split": "forget10", "template": "qa"},
        "summary": {"forget_quality": fq, "model_utility": mu, "forget_Q_A_ROUGE": frouge, "retain_Q_A_ROUGE": rrouge,
                    "privleak": pl, "forget_Truth_Ratio": 0.6, "extraction_strength": 0.2},
        "forget_quality": {"agg_value": fq, "value_by_index": {}},
    }  # fmt: skip
    if relearn:
        ev["relearn"] = {"steps": 10, "before": {"forget_Q_A_ROUGE": frouge}, "after": {"forget_Q_A_ROUGE": relearn}}
    return ev


def _fidelity():
    mods = [f"model.layers.{i}.{k}.weight" for i in range(4) for k in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]
    out = {}
    for j, dec in enumerate(("learned", "sketch", "ls", "lora")):
        pm = [{"name": m, "shape": [64, 64], "cos": 0.9 - 0.2 * j - 0.01 * i, "cos_unobserved": 0.7 - 0.2 * j, "rel_err": 0.3 + 0.2 * j} for i, m in enumerate(mods)]
        out[dec] = {"cos_mean": sum(p["cos"] for p in pm) / len(pm), "cos_unobserved_mean": 0.7 - 0.2 * j, "rel_err_mean": 0.3 + 0.2 * j, "per_module": pm}
    return out


def make_runs(root: Path) -> list[Path]:
    specs = {
        "retain": (1.0, 0.61, 0.35, 0.9, 0.0, None, None),
        "grad_ascent": (1e-12, 0.0, 0.01, 0.05, 40.0, 0.3, "exact"),
        "npo": (0.02, 0.5, 0.3, 0.8, -20.0, 0.6, None),
        "r2f": (0.4, 0.55, 0.33, 0.85, -5.0, 0.4, "learned.safetensors"),
    }
    dirs = []
    for name, (fq, mu, fr, rr, pl, rl, dec) in specs.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps(_eval(fq, mu, fr, rr, pl, rl)))
        if name != "retain":
            log = [{"step": s, "forget_loss": 2.0 + s * {"grad_ascent": 0.5, "npo": 0.1, "r2f": 0.3}[name], "retain_loss": 1.0 + 0.01 * s} for s in range(12)]
            (d / "manifest.json").write_text(json.dumps({"method": name, "config": {"decoder": dec} if dec else {}, "log": log,
                                                         "cost": {"wall_s": {"grad_ascent": 12.0, "npo": 20.0, "r2f": 9.0}[name], "peak_mem_mb": 800 + 10 * len(name)}}))
        if name == "r2f":
            (d / "fidelity.json").write_text(json.dumps(_fidelity()))
        dirs.append(d)
    return dirs


def make_realfacts_runs(root: Path) -> list[Path]:
    """Run directories as ``r2f demo --bench realfacts`` writes them: realfacts eval.json, no retain oracle."""
    specs = {  # forget, neighbour, general known, held-out ppl
        "original": (1.0, 1.0, 1.0, 24.4), "r2f": (0.19, 0.94, 0.93, 25.1), "npo": (0.05, 0.6, 0.85, 31.0),
    }
    dirs = []
    for name, (fk, nk, gk, ppl) in specs.items():
        d = root / name
        d.mkdir(parents=True)
        summary = {"forget_known": fk, "neighbour_known": nk, "general_known": gk, "heldout_ppl": ppl,
                   "mia_loss_forget_vs_neighbour": 0.5}
        (d / "eval.json").write_text(json.dumps({"meta": {"bench": "realfacts"}, "summary": summary}))
        if name != "original":
            log = [{"step": s, "forget_nll": 1.0 + s * (0.3 if name == "npo" else 0.1)} for s in range(10)]
            (d / "manifest.json").write_text(json.dumps({
                "method": name, "log": log, "steps": {"budget": 10, "done": 10, "stop_reason": None},
                "cost": {"wall_s": 60.0, "peak_mem_mb": 3000.0}}))
        dirs.append(d)
    return dirs


def run_cli(argv) -> int:
    from r2f.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_report_cli_writes_self_contained_html(tmp_path):
    dirs = make_runs(tmp_path / "runs")
    out = tmp_path / "rep"
    assert run_cli(["report", *map(str, dirs), "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    m = rep["methods"]
    assert set(m) == {"retain", "grad_ascent", "npo", "r2f"}
    assert m["r2f"]["forget_quality"] == 0.4 and m["r2f"]["wall_s"] == 9.0
    assert m["r2f"]["decoder_cos"] == pytest.approx(_fidelity()["learned"]["cos_mean"])  # decoder named in the config
    assert m["retain"]["wall_s"] is None and m["npo"]["relearn_forget_Q_A_ROUGE"] == 0.6
    for key in ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "privleak", "wall_s", "peak_mem_mb", "decoder_cos"):
        assert key in m["npo"]
    assert set(rep["figures"]) == {"fq_vs_mu", "steps", "cost", "fidelity"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # nothing external
    md = (out / "report.md").read_text()
    assert "| r2f | r2f |" in md and "Gradient fidelity" in md and "Relearning attack" in md
    assert all((out / p).is_file() for p in rep["figures"].values())


def test_report_refuses_a_non_empty_out_and_overwrite_clears_it(tmp_path, capsys):
    """An old report's figures must not survive next to a new report's files."""
    dirs = make_runs(tmp_path / "runs")
    out = tmp_path / "rep"
    out.mkdir()
    (out / "fidelity.png").write_bytes(b"an older report's figure")
    assert run_cli(["report", str(dirs[0]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "fidelity.png").read_bytes().startswith(b"an older")
    assert run_cli(["report", str(dirs[0]), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "fidelity.png").exists() and (out / "report.html").is_file()
    # an input inside --out is never cleared away
    assert run_cli(["report", str(dirs[0]), "--out", str(tmp_path / "runs"), "--overwrite"]) == 2
    assert dirs[0].is_dir()


def test_demo_refuses_a_non_empty_out_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.md").write_text("an interrupted run's report")
    assert run_cli(["demo", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["report.md"]


def test_build_report_in_memory(tmp_path):
    from r2f.report import build_report

    runs = {
        "r2f": {"eval": {"forget_quality": 0.3, "model_utility": 0.5, "forget_Q_A_ROUGE": 0.2, "retain_Q_A_ROUGE": 0.8, "privleak": 3.0},
                "manifest": {"method": "r2f", "log": [{"step": 0, "forget_loss": 1.0}, {"step": 1, "forget_loss": 1.5}]},
                "wall_s": 3.0, "peak_mem_mb": 100.0, "decoder_cos": 0.8},
        "ga": {"eval": {"forget_quality": {"agg_value": 0.0}, "model_utility": {"agg_value": 0.1}}},
    }  # fmt: skip
    rep = build_report(runs, tmp_path / "r")
    assert rep["methods"]["r2f"]["decoder_cos"] == 0.8 and rep["methods"]["r2f"]["wall_s"] == 3.0
    assert rep["methods"]["ga"]["forget_quality"] == 0.0  # FQ 0 plotted at the floor, not dropped
    assert {"fq_vs_mu", "steps", "cost"} <= set(rep["figures"])
    json.loads((tmp_path / "r" / "report.json").read_text())


def test_report_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["report", str(empty), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "eval.json").write_text("{oops")
    assert run_cli(["report", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "eval.json:1" in err and "empty" in err
    assert not (tmp_path / "o").exists()
    from r2f.report import build_report

    with pytest.raises(R2FInputError):
        build_report({}, tmp_path / "o")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def screenshot(html_path: Path, png: Path, size: str = "1200,2000") -> None:
    exe = _chromium()
    profile = tempfile.mkdtemp(prefix="r2f-chromium-")
    try:
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             f"--screenshot={png}", f"--window-size={size}", html_path.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize("bench", ["world", "realfacts"])
def test_report_renders_in_headless_chromium(tmp_path, bench):
    if _chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    dirs = (make_runs if bench == "world" else make_realfacts_runs)(tmp_path / "runs")
    out = tmp_path / "rep"
    assert run_cli(["report", *map(str, dirs), "--out", str(out)]) == 0
    if bench == "realfacts":  # the realfacts table and its figure are in the page that is rendered
        page = (out / "report.html").read_text()
        assert "forget known ↓" in page and "held-out ppl ↓" in page and "<img alt='known'" in page
    png = tmp_path / "shot.png"
    screenshot(out / "report.html", png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get("R2F_SCREENSHOT_OUT")
    if keep:
        shutil.copy(png, keep if bench == "world" else f"{keep}.{bench}.png")


def test_realfacts_report_columns_and_headline(tmp_path):
    """A realfacts report: its four columns per row, no forget-quality columns, and a headline that applies the
    realfacts criteria against the original (forget known ≤ 0.2; neighbours, general ≥ 0.9×; ppl ≤ 1.1×)."""
    dirs = make_realfacts_runs(tmp_path / "runs")
    out = tmp_path / "rep"
    assert run_cli(["report", *map(str, dirs), "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["methods"]["r2f"]["neighbour_known"] == 0.94 and "forget_quality" in rep["methods"]["r2f"]
    # npo: forget 0.05 meets; neighbours 0.6 < 0.9, ppl 31.0 > 1.1 × 24.4 do not; r2f meets all four
    assert rep["headline"]["checks"]["npo"] == {"forget": True, "neighbour": False, "general": False,
                                                "heldout_ppl": False}
    assert rep["headline"]["methods"] == ["r2f"] and "forget known ≤ 0.2" in rep["headline"]["text"]
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    assert "forget known ↓" in header and "forget quality" not in header
    assert rep["figures"]["known"] == "figures/known.png" and "fq_vs_mu" not in rep["figures"]


def _unlearning_run(fq, mu, done=30, reason=None, log=None):
    return {"eval": {"summary": {"forget_quality": fq, "model_utility": mu, "forget_Truth_Ratio": 0.6,
                                 "extraction_strength": 0.2}},
            "manifest": {"method": "npo", "steps": {"budget": 30, "done": done, "stopped_early": reason is not None,
                                                    "stop_reason": reason}, "log": log or []}}  # fmt: skip


def test_loss_panels_use_a_log_axis():
    """Gradient ascent drives the forget NLL to ~30: on a linear axis every other curve would be flat."""
    from r2f.report import plots

    logs = {"grad_ascent": [{"step": s, "forget_nll": 2.0 * 1.4**s, "retain_nll": 1.0 + s, "loss": -2.0 * s, "lr": 1e-5}
                            for s in range(10)],
            "r2f": [{"step": s, "forget_nll": 2.0 + 0.1 * s, "retain_nll": 1.0, "step_size": 0.01} for s in range(10)]}
    fig = plots.steps_figure(logs)
    scales = {ax.get_title().split(" ")[0]: ax.get_yscale() for ax in fig.axes if ax.get_title()}
    assert scales["forget_nll"] == "log" and scales["retain_nll"] == "log"
    assert scales["loss"] == "linear" and scales["lr"] == "linear"  # a negative loss and non-losses stay linear


def test_report_has_steps_column_definitions_and_headline(tmp_path):
    from r2f.report import build_report

    runs = {
        "original": {"eval": {"summary": {"forget_quality": 1e-4, "model_utility": 0.8}}},
        "retrain": {"eval": {"summary": {"forget_quality": 1.0, "model_utility": 0.8}}},
        "good": _unlearning_run(0.4, 0.75),
        "useless": _unlearning_run(0.6, 0.1, done=12, reason="forget NLL 3.1 reached the threshold 3.0"),
        "weak": _unlearning_run(0.01, 0.79),
    }
    rep = build_report(runs, tmp_path / "r")
    assert rep["methods"]["useless"]["steps_done"] == 12 and rep["methods"]["useless"]["steps_budget"] == 30
    assert rep["headline"]["methods"] == ["good"]  # the oracles are no candidates; useless lost its utility
    assert rep["headline"]["text"] == ("Methods meeting FQ ≥ 0.05 at ≥ 0.9× the original's utility (MU ≥ 0.720): "
                                       "good.")
    md = (tmp_path / "r" / "report.md").read_text()
    html = (tmp_path / "r" / "report.html").read_text()
    assert "| useless | npo | 12/30 (forget NLL 3.1 reached the threshold 3.0) |" in md and "| good | npo | 30/30 |" in md
    assert "| original | original | — |" in md
    assert rep["headline"]["text"] in md and rep["headline"]["text"].replace("'", "&#x27;") in html
    headers = set(re.findall(r"<th>(.*?)</th>", html))
    assert {"steps run", "forget TR", "forget ES ↓"} <= headers
    for h in headers:  # every column of every table is defined on the page
        assert f"<dt>{h}</dt>" in html, h
        assert f"- **{h.replace('&gt;', '>')}**: " in md, h

    none = build_report({"weak": _unlearning_run(0.01, 0.79)}, tmp_path / "n")
    assert none["headline"]["methods"] == [] and none["headline"]["text"].endswith(": none (no 'original' run, so "
                                                                                  "utility is not compared).")


def test_report_names_the_byte_of_a_non_utf8_run_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_bytes(b'{"summary":\n {"forget_quality": "\xff"}}')
    assert run_cli(["report", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "eval.json:2" in err and "line 2, column 22 (byte offset 33)" in err
