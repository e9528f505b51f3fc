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
