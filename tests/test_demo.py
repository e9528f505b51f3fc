"""``r2f demo``: the quick pipeline end to end (tiny target; models shared with the fixtures' cache), its retain data
and the configuration each row runs (no training)."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from r2f.demo import BENCH_FORGET, DEMO_METHODS, REALFACTS_STEPS, DemoConfig, Target, console_table, run_demo
from r2f.errors import R2FInputError
from test_methods import tiny_setup  # noqa: F401  (the random tiny Llama and its data files)

REQUIRED = ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "privleak", "wall_s",
            "peak_mem_mb")


def test_quick_demo_end_to_end(tmp_path, tiny_models):
    out = tmp_path / "demo"
    report = run_demo(out, DemoConfig(quick=True, steps=4), log=lambda m: None)
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk["methods"]) == {"original", "retrain", *DEMO_METHODS}
    for name, row in on_disk["methods"].items():
        for key in REQUIRED[:5]:
            assert key in row, (name, key)
    for name in DEMO_METHODS:
        assert on_disk["methods"][name]["wall_s"] > 0 and on_disk["methods"][name]["peak_mem_mb"] > 0
    assert on_disk["methods"]["retrain"]["forget_quality"] == 1.0
    # r2f_exact's cosine is measured like every row's (fidelity.json's exact entry), not written in by the demo
    assert json.loads((out / "runs" / "r2f_exact" / "manifest.json").read_text())["method"] == "exact"
    fid = json.loads((out / "fidelity.json").read_text())
    assert on_disk["methods"]["r2f_exact"]["decoder_cos"] == fid["exact"]["cos_mean"] == pytest.approx(1.0, abs=1e-6)
    assert on_disk["methods"]["r2f_sketch"]["decoder_cos"] == fid["sketch"]["cos_mean"] < 1.0
    assert 0.0 < on_disk["methods"]["r2f"]["decoder_cos"] <= 1.0
    # the black-box row: a decoder trained in access mode lora, measured in that mode, recorded in the manifest
    assert 0.0 < on_disk["methods"]["r2f_lora"]["decoder_cos"] <= 1.0
    assert json.loads((out / "fidelity_lora.json").read_text())["access"] == "lora"
    lora_dec = json.loads((out / "runs" / "r2f_lora" / "manifest.json").read_text())["method_info"]["decoder"]
    batch_dec = json.loads((out / "runs" / "r2f" / "manifest.json").read_text())["method_info"]["decoder"]
    assert (lora_dec["access"], batch_dec["access"]) == ("lora", "batch") and lora_dec["sha256"] != batch_dec["sha256"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert (out / "report.md").is_file() and (out / "fidelity.json").is_file()
    assert console_table(report).row_count == len(DEMO_METHODS) + 2
    # the report says which configuration the rows ran (tiny: no bench choice for that target)
    assert on_disk["notes"] and "demo options" in on_disk["notes"][0]
    assert on_disk["notes"][0] in (out / "report.md").read_text()


def test_console_table_formats_each_column_one_way():
    """Every number of a column has the same shape (decimals, or scientific for p-values), so columns line up."""
    import re

    from rich.console import Console

    methods = {
        "original": {"forget_quality": 1.7e-4, "model_utility": 0.8044, "forget_Q_A_ROUGE": 1.0, "retain_Q_A_ROUGE": 1.0,
                     "privleak": -99.99999, "decoder_cos": None, "wall_s": None, "peak_mem_mb": None},
        "r2f": {"forget_quality": 0.4337, "model_utility": 0.7371, "forget_Q_A_ROUGE": 0.7344, "retain_Q_A_ROUGE": 0.9907,
                "privleak": -66.47, "decoder_cos": 0.9289, "wall_s": 11.79, "peak_mem_mb": 776.6, "steps_done": 30,
                "steps_budget": 30},
        "grad_ascent": {"forget_quality": 1.0, "model_utility": 0.0, "forget_Q_A_ROUGE": 0.01042,
                        "retain_Q_A_ROUGE": 0.005952, "privleak": 16.67, "decoder_cos": None, "wall_s": 2.196,
                        "peak_mem_mb": 824.2, "steps_done": 12, "steps_budget": 30},
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(console_table({"methods": methods}))
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in console.export_text().splitlines()
            if line.startswith("│")]
    assert [r[:2] for r in rows] == [["original", "—"], ["r2f", "30/30"], ["grad_ascent", "12/30"]]
    for col in range(2, len(rows[0])):
        cells = [r[col] for r in rows if r[col] != "—"]
        shapes = {re.sub(r"[+-]?\d+", "9", c) for c in cells}
        assert len(shapes) == 1, (col, cells)


# ----------------------------------------------------------------------------- retain data and bench choices
def test_prepare_retain_file_holds_the_retain_half_of_the_world_facts_only(monkeypatch, tmp_path):
    """prepare()'s retain file (every method's retain data, in the demo and in r2f bench): the retain split and the
    world facts' retain half; no question that model utility scores (the evaluation half) and none to forget."""
    import r2f.demo
    from r2f.data import load_items, load_split

    # models and decoder are the cache's business; here only the files prepare() writes matter
    monkeypatch.setattr(r2f.demo, "train_model", lambda world, **kw: tmp_path / kw.get("split", "proxy"))
    monkeypatch.setattr(r2f.demo, "_cached_decoder", lambda proxy, world, cfg, access: tmp_path / f"dec-{access}")
    prep = r2f.demo.prepare(tmp_path / "out", DemoConfig(), lambda m: None, {})
    held = {it.question for it in load_items(prep.retain_file)}
    world = prep.world
    assert {it.question for it in load_split(world, "world_facts_retain")} <= held
    assert not held & {it.question for it in load_split(world, "world_facts_eval")}
    assert not held & {it.question for it in load_split(world, "forget10")}
    assert held == {it.question for it in load_split(world, "retain90") + load_split(world, "world_facts_retain")}
    # the retain half's records are the world file's own lines, byte for byte
    wf_lines = (world / "world_facts.jsonl").read_text(encoding="utf-8").splitlines()
    assert set(prep.retain_file.read_text(encoding="utf-8").splitlines()) >= set(wf_lines[1::2])


@pytest.mark.parametrize("target", ["small", "smollm2"])
def test_prepare_trains_the_decoders_on_the_targets_proxy_ladder(monkeypatch, tmp_path, target):
    """The world's own targets get decoders from the proxy alone; SmolLM2 targets from the proxy ladder (the proxy,
    its SmolLM2-wide member and its SmolLM2-tokenizer member), every member a proxy-pool model of the same seed."""
    import r2f.demo
    from r2f.demo_spec import DECODER_LADDER
    from r2f.models.ladder import PROXY_SIZES

    trained, decoders = [], {}
    monkeypatch.setattr(r2f.demo, "train_model", lambda world, size, **kw: trained.append((size, kw)) or
                        tmp_path / f"{size}-{kw.get('split', 'full')}")
    monkeypatch.setattr(r2f.demo, "_cached_decoder",
                        lambda ladder, world, cfg, access: decoders.setdefault(access, ladder) and tmp_path / access)
    prep = r2f.demo.prepare(tmp_path / "out", DemoConfig(target=target), lambda m: None, {})
    expected = ("proxy",) if target == "small" else ("proxy", "proxy_wide", "proxy_smoltok")
    assert DECODER_LADDER[target] == expected and set(expected) <= set(PROXY_SIZES)
    assert [size for size, kw in trained if size in PROXY_SIZES] == list(expected)
    assert all(kw == {"seed": 0} for size, kw in trained if size in PROXY_SIZES)
    assert decoders["batch"] == decoders["lora"] == prep.ladder == tuple(tmp_path / f"{s}-full" for s in expected)
    assert prep.proxy == prep.ladder[0]


def _captured_options(monkeypatch, tmp_path, cfg: DemoConfig) -> dict[str, dict]:
    """run_method's options per demo method, with r2f.methods.unlearn replaced by a recorder (no training)."""
    import r2f.demo
    from r2f.demo import Prepared, run_method

    seen: dict[str, dict] = {}

    def unlearn(model, forget, retain, *, method, out, steps, seed, overwrite, **options):
        seen[out.name] = {"method": method, **options}
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text("{}")
        return out

    monkeypatch.setattr(r2f.demo, "unlearn", unlearn)
    prep = Prepared(world=tmp_path, forget_file=tmp_path / "f", retain_file=tmp_path / "r", proxy=tmp_path / "p",
                    full=tmp_path / "full", retain=tmp_path / "oracle", decoder=tmp_path / "dec",
                    decoder_lora=tmp_path / "dec_lora")
    for name in DEMO_METHODS:
        run = run_method(prep, cfg, name, tmp_path / "runs" / name)
        assert {"method": run["method"], **run["options"]} == seen[name]
    return seen


def test_demo_baselines_run_the_shipped_bench_choice(monkeypatch, tmp_path):
    """On the bench's target every baseline with a bench entry runs its chosen lr_scale and options (read here
    from the shipped file itself); the R2F rows and the baselines without an entry run their demo options."""
    from importlib import resources

    from r2f.demo import BASELINES, R2F_ROWS
    from r2f.methods import METHODS

    shipped = json.loads(resources.files("r2f").joinpath("bench_chosen.json").read_text(encoding="utf-8"))
    target, chosen = shipped["produced_by"]["target"], shipped["baselines"]
    assert any(c["lr_scale"] != 1.0 or c["options"] for c in chosen.values())  # a choice the test can see
    seen = _captured_options(monkeypatch, tmp_path, DemoConfig(target=target))
    for name in DEMO_METHODS:
        row = DEMO_METHODS[name]
        method, demo_options = row.method, row.options
        got = {k: v for k, v in seen[name].items() if k not in ("method", "decoder", "views")}
        if name in chosen:
            want = {k: v for k, v in dict(demo_options, **chosen[name]["options"]).items() if k not in ("decoder", "views")}
            if chosen[name]["lr_scale"] != 1.0:
                want["lr"] = pytest.approx(chosen[name]["lr_scale"] * METHODS[method].default_lr)
            assert got == want, name
        else:  # R2F rows and baselines without a bench entry
            # rmu and wga were added after the shipped bench ran
            assert name in R2F_ROWS or name in ("rmu", "wga")
            assert got == {k: v for k, v in demo_options.items() if k not in ("decoder", "views")}, name
    assert seen["grad_ascent"]["lr"] == pytest.approx(5e-4) and seen["lora_npo"]["lr"] == pytest.approx(1e-3)
    assert set(chosen) <= set(BASELINES)
    # the R2F rows get nothing from the bench, even though it preferred guard_budget=0.08 for r2f
    assert all("guard_budget" not in seen[n] and "lr" not in seen[n] for n in R2F_ROWS)


def test_demo_baselines_keep_demo_options_off_the_bench_target_or_when_turned_off(monkeypatch, tmp_path):
    for cfg in (DemoConfig(bench_chosen=False), DemoConfig(quick=True)):  # off; the quick demo's target tiny
        seen = _captured_options(monkeypatch, tmp_path / cfg.target / str(cfg.bench_chosen), cfg)
        assert "lr" not in seen["grad_ascent"] and "lr" not in seen["simnpo"]


def test_demo_report_says_which_configuration_each_row_ran():
    from r2f.demo import bench_chosen_note

    from importlib import resources

    from r2f.demo import BASELINES

    chosen = json.loads(resources.files("r2f").joinpath("bench_chosen.json").read_text(encoding="utf-8"))["baselines"]
    note = bench_chosen_note(DemoConfig())
    assert all(f"{name} {c['label']}" in note for name, c in chosen.items()) and "bench_chosen.json" in note
    missing = [n for n in BASELINES if n not in chosen]
    assert (f"{', '.join(missing)} (no bench entry)" in note) if missing else "no bench entry" not in note
    assert "R2F rows (r2f, r2f_lora, r2f_sketch, r2f_exact)" in note
    assert "demo options" in bench_chosen_note(DemoConfig(quick=True))


def test_demo_rows_that_decode_with_the_proxy_trained_decoder_get_its_file(monkeypatch, tmp_path):
    """A row's ``proxy_decoder`` names which prepared decoder it runs with (by access mode): the r2f row the batch
    one, r2f_lora the lora one, by file; the other R2F rows keep their own (a built-in decoder, exact's)."""
    import dataclasses

    seen = _captured_options(monkeypatch, tmp_path, DemoConfig())
    assert seen["r2f"]["decoder"] == str(tmp_path / "dec") and seen["r2f_lora"]["decoder"] == str(tmp_path / "dec_lora")
    assert seen["r2f_sketch"]["decoder"] == "sketch" and "decoder" not in seen["r2f_exact"]
    assert [n for n, row in DEMO_METHODS.items() if row.proxy_decoder] == ["r2f", "r2f_lora"]
    with pytest.raises(TypeError):  # the shared table is read-only
        DEMO_METHODS["r2f"].options["decoder"] = "sketch"
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEMO_METHODS["r2f"].proxy_decoder = "lora"


def test_demo_measures_the_decoder_of_every_row_that_runs_one(tmp_path):
    """fidelity_data names every decoder the rows decode with (exact included: its row's cosine is measured, not
    assumed), besides the learned decoder and the closed forms of its mode; rows that decode nothing add none."""
    from r2f.decoders.fidelity import mode_candidates
    from r2f.demo import Prepared, fidelity_data, row_decoder

    prep = Prepared(world=tmp_path, forget_file=tmp_path / "f", retain_file=tmp_path / "r", proxy=tmp_path,
                    full=tmp_path, retain=None, decoder=tmp_path / "dec")
    default = ("learned", *mode_candidates("batch"))  # what measure_fidelity measures when not told
    assert "exact" not in default
    assert fidelity_data(prep, DemoConfig())["decoders"] == (*default, "exact")
    assert fidelity_data(prep, DemoConfig(methods=["r2f", "npo", "rmu"]))["decoders"] == default
    assert [row_decoder(DEMO_METHODS[n]) for n in ("r2f", "r2f_lora", "r2f_sketch", "r2f_exact", "npo")] == \
        [None, None, "sketch", "exact", None]


def test_exact_decoder_fidelity_is_measured_one(tiny_setup):
    """The exact decoder's cosine comes out of measure_fidelity as every decoder's does: 1 to rounding (a closed
    form from the same probe does not reach it), so the demo's r2f_exact row can read it from there."""
    from r2f.data.loader import load_items
    from r2f.decoders import measure_fidelity

    items = load_items(tiny_setup["forget"])
    fid = measure_fidelity(None, str(tiny_setup["model"]), items=items, decoders=("exact", "sketch"), views=2,
                           max_batches=1, cost=False, access="batch")
    assert fid["exact"]["cos_mean"] == pytest.approx(1.0, abs=1e-6)
    assert fid["sketch"]["cos_mean"] < 1.0 - 1e-3


def test_demo_does_not_import_bench():
    """r2f.bench imports r2f.demo (the rows it tunes); the demo reads the shipped choice itself, so the two modules
    import one way only (no lazy import back inside a function)."""
    import ast
    import inspect

    import r2f.bench
    import r2f.demo

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(r2f.demo)))
                if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(ast.parse(inspect.getsource(r2f.demo)))
                 if isinstance(node, ast.Import) for alias in node.names}
    assert "r2f.bench" not in imported and "r2f.demo" in {
        node.module for node in ast.walk(ast.parse(inspect.getsource(r2f.bench))) if isinstance(node, ast.ImportFrom)}
    assert r2f.bench.chosen_overrides is r2f.demo.chosen_overrides  # still offered where it was


# ----------------------------------------------------------------------------- --bench realfacts
def test_realfacts_demo_on_a_tiny_stand_in(monkeypatch, tmp_path, tiny_models):
    """--bench realfacts end to end, with the tiny world model standing in for SmolLM2 as shipped and the hand-made
    realfacts directory of test_realfacts.py: the world proxy's decoder, the realfacts splits as forget and retain
    data, no retain oracle, the realfacts columns in report.json and the realfacts headline."""
    import r2f.demo
    from r2f.data import load_items
    from test_realfacts import write_tiny_realfacts

    monkeypatch.setitem(r2f.demo.BASE_MODELS, "smollm2-base", str(tiny_models["full"]))
    # the quick demo's decoder budget (realfacts has no --quick; the decoder is the proxy's either way)
    monkeypatch.setattr(DemoConfig, "decoder_budget", property(lambda self: {"max_items": 48, "probe_seeds": 1}))
    data = write_tiny_realfacts(tmp_path / "rf")
    out = tmp_path / "demo"
    cfg = DemoConfig(target="smollm2-base", bench="realfacts", realfacts_data=str(data), steps=2,
                     methods=["r2f", "r2f_sketch", "npo"])
    assert cfg.forget == "forget"
    report = run_demo(out, cfg, log=lambda m: None)
    on_disk = json.loads((out / "report.json").read_text())
    assert list(on_disk["methods"]) == ["original", "r2f", "r2f_sketch", "npo"]  # no retrain row
    for name, row in on_disk["methods"].items():
        for key in ("forget_known", "neighbour_known", "general_known"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert row["heldout_ppl"] > 1.0 and row["forget_quality"] is None
    assert [it.question for it in load_items(out / "realfacts" / "forget.jsonl")] == \
        [it.question for it in load_items(data / "facts.jsonl")[:2]]
    manifest = json.loads((out / "runs" / "r2f" / "manifest.json").read_text())
    assert manifest["steps"]["budget"] == 2 and manifest["method_info"]["decoder"]["access"] == "batch"
    assert 0.0 < on_disk["methods"]["r2f"]["decoder_cos"] <= 1.0
    assert on_disk["methods"]["r2f_sketch"]["decoder_cos"] is not None
    assert set(on_disk["headline"]["checks"]) == {"r2f", "r2f_sketch", "npo"}
    assert on_disk["demo"]["config"]["bench"] == "realfacts" and "as shipped" in on_disk["notes"][0]
    assert "forget known ↓" in (out / "report.html").read_text()
    assert console_table(report).row_count == 4


@pytest.mark.parametrize("argv, source", [
    (["--bench", "realfacts"], "--target"),
    (["--target", "smollm2-base"], "--target"),
    (["--bench", "realfacts", "--target", "smollm2-base", "--quick"], "--quick"),
    (["--bench", "tofu"], "--bench"),
    (["--target", "big"], "--target"),
])
def test_demo_bad_bench_and_target_exit_2_with_one_line(tmp_path, capsys, argv, source):
    from r2f.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and source in err, err
    assert not (tmp_path / "out").exists()


def test_demo_config_is_frozen_and_resolves_the_bench_defaults_once():
    cfg = DemoConfig(methods=["npo", "r2f"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]
    assert cfg.methods == ("npo", "r2f") and (cfg.target, cfg.forget, cfg.steps) == ("small", "forget10", 30)
    quick = DemoConfig(quick=True)
    assert (quick.target, quick.steps) == ("tiny", 20)  # small's quick stand-in, the quick budget
    assert DemoConfig(quick=True, steps=4).steps == 4 and DemoConfig(forget="forget05").forget == "forget05"
    facts = DemoConfig(target="smollm2-base", bench="realfacts")
    assert (facts.forget, facts.steps) == ("forget", REALFACTS_STEPS)
    assert DemoConfig(**cfg.to_dict()) == cfg  # a resolved record resolves to itself
    assert all(d["help"] for d in DemoConfig.describe())


@pytest.mark.parametrize("settings, source, listed", [
    ({"target": "big"}, "--target", typing.get_args(Target)),
    ({"bench": "tofu"}, "--bench", ("world", "realfacts")),
    ({"methods": ["npo", "nope"]}, "--methods", tuple(DEMO_METHODS)),
    ({"forget": "forget05", "bench": "realfacts", "target": "smollm2-base"}, "forget", BENCH_FORGET["realfacts"]),
    ({"forget": "forget"}, "forget", BENCH_FORGET["world"]),
])
def test_demo_config_unknown_value_names_the_setting_and_every_choice(settings, source, listed):
    with pytest.raises(R2FInputError) as err:
        DemoConfig(**settings)
    assert err.value.source == source and f"(choose from {', '.join(listed)})" in str(err.value)


@pytest.mark.parametrize("settings, source", [({"seed": "1"}, "--seed"), ({"steps": 2.5}, "--steps"),
                                              ({"jobs": 0}, "--jobs"), ({"views": None}, "views")])
def test_demo_config_wrong_type_or_range_names_the_setting(settings, source):
    with pytest.raises(R2FInputError) as err:
        DemoConfig(**settings)
    assert err.value.source == source
