"""``r2f bench``: the selection rule, input refusals, and bench.json/bench.md from a stubbed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r2f import bench
from r2f.bench import GRIDS, QUICK_GRIDS, BenchConfig, Config, Score, select_config
from r2f.demo import DEMO_METHODS, Prepared
from r2f.errors import R2FInputError, R2FNumericalError


def _s(fq: float | None, mu: float | None, orig: float = 1.0) -> Score:
    return Score(fq, mu, orig)


# ----------------------------------------------------------------------------- the rule
def test_rule_picks_highest_mean_fq_among_configs_keeping_utility_on_every_seed():
    scores = [
        [_s(0.10, 0.95), _s(0.10, 0.95)],  # qualifies, mean FQ 0.10
        [_s(0.90, 0.99), _s(0.90, 0.85)],  # best FQ but below 0.9× on the second seed: out
        [_s(0.30, 0.90), _s(0.20, 0.92)],  # qualifies (0.9× exactly counts), mean FQ 0.25
    ]
    assert select_config(scores) == (2, "qualified")


def test_rule_ratio_is_to_the_original_on_the_same_seed():
    scores = [[_s(0.5, 0.7, orig=0.8), _s(0.5, 0.7, orig=0.75)],   # 0.875× on seed 1: out
              [_s(0.1, 0.5, orig=0.55), _s(0.1, 0.5, orig=0.5)]]   # 0.909×, 1.0×
    assert select_config(scores) == (1, "qualified")


def test_rule_fallback_highest_minimum_utility_ratio():
    scores = [[_s(0.9, 0.5), _s(0.9, 0.8)],     # min 0.5
              [_s(0.0, 0.85), _s(0.0, 0.7)],    # min 0.7: chosen despite FQ 0
              [_s(0.5, 0.89), _s(0.5, 0.6)]]    # min 0.6
    assert select_config(scores) == (1, "fallback")


def test_rule_ties_go_to_higher_mean_utility_then_earlier_entry():
    assert select_config([[_s(0.2, 0.91)], [_s(0.2, 0.99)], [_s(0.2, 0.99)]]) == (1, "qualified")
    assert select_config([[_s(0.2, 0.95)], [_s(0.2, 0.95)]]) == (0, "qualified")
    # fallback: equal minimum ratios, then the mean ratio, then grid order
    assert select_config([[_s(0, 0.5), _s(0, 0.6)], [_s(0, 0.5), _s(0, 0.8)]]) == (1, "fallback")
    assert select_config([[_s(0, 0.5)], [_s(0, 0.5)]]) == (0, "fallback")


def test_rule_failed_runs_score_zero():
    assert select_config([[_s(None, None)], [_s(0.0, 0.1)]]) == (1, "fallback")
    assert select_config([[_s(float("nan"), 0.95)], [_s(0.01, 0.95)]]) == (1, "qualified")
    with pytest.raises(ValueError):
        select_config([])


def test_grids_give_every_method_the_same_budget_and_r2f_its_defaults():
    for grids, n in ((GRIDS, 4), (QUICK_GRIDS, 2)):
        assert set(grids) == set(DEMO_METHODS)
        assert {len(g) for g in grids.values()} == {n}
        for configs in grids.values():
            assert configs[0] == Config()  # the defaults, first (they win ties)
            assert len(set(configs)) == n
    with pytest.raises(TypeError):
        GRIDS["r2f"] = ()  # type: ignore[index]
    assert GRIDS["npo"][2].label == "lr×2" and GRIDS["r2f"][1].label == "guard_budget=0.05"


# ----------------------------------------------------------------------------- input refusals
@pytest.mark.parametrize("kwargs, flag", [
    ({"tune_seeds": (1, 10)}, "--tune-seeds"),
    ({"report_seeds": (1, 2)}, "--report-seeds"),
    ({"report_seeds": (1, 1, 2)}, "--report-seeds"),
    ({"methods": ("r2f", "nope")}, "--methods"),
    ({"steps": 0}, "--steps"),
])
def test_bad_config_names_the_flag(kwargs, flag):
    with pytest.raises(R2FInputError) as exc:
        BenchConfig(**kwargs)
    assert exc.value.source == flag


def test_quick_defaults():
    assert BenchConfig(quick=True).tune_seeds == (10,)
    assert BenchConfig().tune_seeds == (10, 11) and BenchConfig().report_seeds == (1, 2, 3)
    assert BenchConfig(quick=True).demo_config(1).target == "tiny"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r2f", "bench", *args], capture_output=True, text=True)


def test_cli_refuses_overlapping_seeds_with_exit_2(tmp_path):
    out = tmp_path / "b"
    r = _cli("--out", str(out), "--tune-seeds", "10,2", "--report-seeds", "1,2,3")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--tune-seeds" in r.stderr and "2" in r.stderr
    assert not out.exists()  # refused before anything is written
    r = _cli("--out", str(out), "--report-seeds", "1,x,3")
    assert r.returncode == 2 and "--report-seeds" in r.stderr


# ----------------------------------------------------------------------------- a stubbed run
def _stub_pipeline(monkeypatch, tmp_path):
    """prepare/run_method/evaluate replaced by deterministic stubs; selection, aggregation and writing stay real.

    Utility 0.8 for the original; a run's FQ grows and its utility falls with the learning rate / guard budget,
    so the defaults win for every method but grad_ascent, whose default diverges."""

    def prepare(out, cfg, log, timings):
        out.mkdir(parents=True, exist_ok=True)
        log("[world] ...")
        timings["world"] = 0.0
        return Prepared(world=out / "world", forget_file=out / "f", retain_file=out / "r", proxy=out / "proxy",
                        full=out / "full", retain=out / "retain", decoder=out / "dec")

    def run_method(prep, cfg, name, out, overrides=None):
        if name == "grad_ascent" and "lr" not in overrides:
            raise R2FNumericalError("NaN loss")
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"w")
        manifest = {"steps": {"done": cfg.steps, "budget": cfg.steps, "stop_reason": None}}
        (out / "manifest.json").write_text(json.dumps(manifest))
        (out / "run.json").write_text(json.dumps({"seed": cfg.seed, "name": name, "overrides": overrides}))
        return {"manifest": manifest, "dir": out, "method": DEMO_METHODS[name].method, "options": overrides}

    def evaluate(model, world, *, retain_log=None, **kw):
        model = Path(model)
        if model.name in ("full", "retain"):
            return {"summary": {"forget_quality": 1e-5, "model_utility": 0.8}}
        run = json.loads((model / "run.json").read_text())
        push = run["overrides"].get("lr", 0.001) / 0.001 + run["overrides"].get("guard_budget", 0.12) / 0.12 - 1
        return {"summary": {"forget_quality": min(1.0, 0.04 * push + run["seed"] / 1000),
                            "model_utility": 0.8 * (1.0 - 0.08 * push)}}

    monkeypatch.setattr(bench, "prepare", prepare)
    monkeypatch.setattr(bench, "run_method", run_method)
    monkeypatch.setattr(bench, "evaluate", evaluate)


def test_bench_json_and_md_from_a_stubbed_run(monkeypatch, tmp_path):
    _stub_pipeline(monkeypatch, tmp_path)
    out = tmp_path / "bench"
    lines: list[str] = []
    cfg = BenchConfig(quick=True, methods=("r2f", "grad_ascent", "npo"), tune_seeds=(10, 11), steps=3)
    result = bench.run_bench(out, cfg, log=lines.append)

    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["protocol"]["tune_seeds"] == [10, 11] and on_disk["protocol"]["report_seeds"] == [1, 2, 3]
    assert on_disk["protocol"]["target"] == "tiny" and on_disk["protocol"]["steps"] == 3
    assert on_disk["original"]["model_utility"] == {"1": 0.8, "2": 0.8, "3": 0.8}
    assert set(on_disk["methods"]) == {"r2f", "grad_ascent", "npo"}
    for name, m in on_disk["methods"].items():
        assert m["trials"] == len(m["grid"]) == len(m["tuning"]) == 2 and m["tuning_runs"] == 4
        assert m["tune_seeds"] == [10, 11] and m["report_seeds"] == [1, 2, 3]
        assert set(m["report"]) == {"1", "2", "3"}
        for rec in m["report"].values():
            assert {"forget_quality", "model_utility", "mu_ratio", "passes", "status"} <= set(rec)
        assert m["summary"]["seeds"] == 3

    r2f_row = on_disk["methods"]["r2f"]
    # defaults: push 1 -> MU 0.736 (0.92×); guard_budget 0.05: push 5/12, lower FQ. Both qualify; the defaults win.
    assert r2f_row["chosen"] == {**Config().to_json(), "index": 0, "why": "qualified"}
    fq = [r2f_row["report"][s]["forget_quality"] for s in ("1", "2", "3")]
    assert fq == pytest.approx([0.041, 0.042, 0.043])
    assert r2f_row["summary"]["forget_quality"]["mean"] == pytest.approx(0.042)
    assert r2f_row["summary"]["forget_quality"]["sd"] == pytest.approx(0.001)
    assert r2f_row["summary"]["mu_ratio"]["mean"] == pytest.approx(0.92) and r2f_row["summary"]["passing"] == 0
    assert r2f_row["grid"][1]["overrides"] == {"guard_budget": 0.05}

    # grad_ascent's defaults diverge (recorded, scored 0); lr×0.5 is chosen and its lr made absolute in the grid
    ga = on_disk["methods"]["grad_ascent"]
    assert ga["tuning"][0]["runs"][0]["status"].startswith("diverged") and ga["tuning"][0]["qualifies"] is False
    assert ga["chosen"]["label"] == "lr×0.5" and ga["chosen"]["why"] == "qualified"
    assert ga["grid"][1]["overrides"]["lr"] == pytest.approx(0.0005)

    # tuning runs keep only their numbers; report runs keep their models
    tune_run = out / "tune" / "seed-10" / "runs" / "npo" / "0"
    assert sorted(p.name for p in tune_run.iterdir()) == ["eval.json", "manifest.json"]
    assert (out / "report" / "seed-1" / "runs" / "npo" / "0" / "model.safetensors").is_file()
    assert (out / "report" / "seed-1" / "runs" / "grad_ascent" / "1" / "eval.json").is_file()  # its grid entry

    md = (out / "bench.md").read_text()
    assert "| r2f | defaults | qualified |" in md and "| original | — | — | — | 0.800 ± 0.000 |" in md
    assert "0/3" in md and "Selection rule" in md
    assert md.count("**chosen**") == 3
    assert sum(line.startswith("[tune seed") for line in lines) == 3 * 2 * 2
    assert sum(line.startswith("[report seed") for line in lines) == 3 * 3

    with pytest.raises(R2FInputError, match="--overwrite"):
        bench.run_bench(out, cfg, log=lines.append)


def test_cli_prints_the_summary_table(monkeypatch, tmp_path):
    """The command end to end in-process (stubbed pipeline): flags parsed, bench.json written, table printed."""
    from typer.testing import CliRunner

    from r2f.cli import _load_commands, app

    _stub_pipeline(monkeypatch, tmp_path)
    _load_commands()
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["bench", "--quick", "--out", str(out), "--methods", "r2f,npo", "--steps", "2",
                                 "--report-seeds", "4,5,6"])
    assert r.exit_code == 0, r.output
    assert "[select] npo: defaults (qualified)" in r.output and "r2f bench: forget10 on target tiny" in r.output
    assert "0.800 ± 0.000" in r.output and "bench.md" in r.output
    result = json.loads((out / "bench.json").read_text())
    assert result["protocol"]["report_seeds"] == [4, 5, 6] and result["protocol"]["tune_seeds"] == [10]
    assert list(result["methods"]) == ["r2f", "npo"]


# ----------------------------------------------------------------------------- the shipped choice
def _script(*args):
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, str(root / "benchmarks" / "bench_chosen.py"), *args],
                          capture_output=True, text=True)


def test_bench_runs_around_the_demo_options_not_a_previous_choice():
    assert BenchConfig().demo_config(1).bench_chosen is False and bench.DemoConfig().bench_chosen is True


def test_chosen_file_from_a_bench_json_round_trips_and_leaves_r2f_rows_out(monkeypatch, tmp_path):
    _stub_pipeline(monkeypatch, tmp_path)
    result = bench.run_bench(tmp_path / "b", BenchConfig(quick=True, methods=("r2f", "grad_ascent", "npo"), steps=3),
                             log=lambda m: None)
    assert result["protocol"]["world_facts_halves"] == {"retain_data": "world_facts_retain",
                                                        "model_utility": "world_facts_eval"}
    out = tmp_path / "chosen.json"
    r = _script(str(tmp_path / "b" / "bench.json"), "--command", "r2f bench --quick", "--out", str(out))
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert record["produced_by"]["command"] == "r2f bench --quick" and record["produced_by"]["target"] == "tiny"
    assert record["produced_by"]["date"] == result["created"][:10]
    assert set(record["baselines"]) == {"grad_ascent", "npo"}  # r2f's choice is not the demo's business
    chosen = bench.load_chosen(out)
    assert chosen.configs["grad_ascent"] == Config(lr_scale=0.5) and chosen.configs["npo"] == Config()
    # on its target the choice becomes run_method overrides; elsewhere, for R2F rows and unlisted methods, none
    assert bench.chosen_overrides("grad_ascent", "tiny", chosen) == {"lr": pytest.approx(5e-4)}
    assert bench.chosen_overrides("grad_ascent", "small", chosen) == {}
    assert bench.chosen_overrides("r2f", "tiny", chosen) == bench.chosen_overrides("simnpo", "tiny", chosen) == {}


def test_chosen_file_adds_a_later_run_of_the_same_protocol_and_refuses_another(monkeypatch, tmp_path):
    _stub_pipeline(monkeypatch, tmp_path)
    cfg = dict(quick=True, steps=3)
    bench.run_bench(tmp_path / "b1", BenchConfig(methods=("r2f", "npo"), **cfg), log=lambda m: None)
    bench.run_bench(tmp_path / "b2", BenchConfig(methods=("grad_ascent",), **cfg), log=lambda m: None)
    bench.run_bench(tmp_path / "b3", BenchConfig(methods=("simnpo",), quick=True, steps=4), log=lambda m: None)
    out = tmp_path / "chosen.json"
    assert _script(str(tmp_path / "b1" / "bench.json"), "--command", "first", "--out", str(out)).returncode == 0
    r = _script(str(tmp_path / "b2" / "bench.json"), "--command", "second", "--out", str(out), "--add")
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert set(record["baselines"]) == {"npo", "grad_ascent"}
    assert record["produced_by"]["command"] == "first"
    assert [(a["command"], a["methods"]) for a in record["produced_by"]["additions"]] == [("second", ["grad_ascent"])]
    assert "grad_ascent" not in record["scope"].split("without a bench entry")[1]
    assert bench.load_chosen(out).configs["grad_ascent"] == Config(lr_scale=0.5)
    before = out.read_text()
    r = _script(str(tmp_path / "b3" / "bench.json"), "--command", "third", "--out", str(out), "--add")
    assert r.returncode == 2 and "produced_by.steps" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert out.read_text() == before  # nothing written


def test_shipped_chosen_file_names_its_source():
    chosen = bench.load_chosen()
    assert chosen.produced_by["command"].startswith("r2f bench") and chosen.produced_by["date"]
    assert chosen.target == "small" and set(chosen.configs) <= set(bench.BASELINES)
    assert not set(chosen.configs) & set(bench.R2F_ROWS)


@pytest.mark.parametrize("edit,field", [
    (lambda r: r.update(format=9), "'format'"),
    (lambda r: r["produced_by"].pop("target"), "'produced_by.target'"),
    (lambda r: r["baselines"].update(r2f={"lr_scale": 1.0, "options": {}}), "'baselines.r2f'"),
    (lambda r: r["baselines"]["npo"].update(lr_scale=-1), "'baselines.npo.lr_scale'"),
    (lambda r: r["baselines"]["npo"].update(options={"beta": "x"}), "'baselines.npo.options'"),
])
def test_bad_chosen_file_names_the_field(tmp_path, edit, field):
    record = {"format": 1, "produced_by": {"target": "small"}, "baselines": {"npo": {"lr_scale": 1.0, "options": {}}}}
    edit(record)
    path = tmp_path / "chosen.json"
    path.write_text(json.dumps(record))
    with pytest.raises(R2FInputError) as err:
        bench.load_chosen(path)
    assert str(path) in str(err.value) and field in str(err.value) and "\n" not in str(err.value)


def test_chosen_script_refuses_a_file_that_is_not_a_bench_json(tmp_path):
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"protocol": {}}))
    out = tmp_path / "chosen.json"
    r = _script(str(bad), "--command", "x", "--out", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr
    assert not out.exists()
