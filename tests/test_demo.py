"""``r2f demo --quick``: the whole pipeline end to end (tiny target; models shared with the fixtures' cache)."""

from __future__ import annotations

import json

from r2f.demo import DEMO_METHODS, DemoConfig, console_table, run_demo

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
    assert on_disk["methods"]["r2f_exact"]["decoder_cos"] == 1.0
    assert 0.0 < on_disk["methods"]["r2f"]["decoder_cos"] <= 1.0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert (out / "report.md").is_file() and (out / "fidelity.json").is_file()
    assert console_table(report).row_count == len(DEMO_METHODS) + 2
