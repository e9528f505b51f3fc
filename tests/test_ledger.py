"""``r2f ledger``: init, apply (twice), show --json, verify; tampering named by entry; bad input; interruptions.

One ledger is built once per module on the trained ``tiny`` model (two requests of 1-2 steps each); tests that
change a ledger work on a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest


def _exit_code(*args: object) -> int:
    """Run the r2f CLI in-process and return its exit code (main() always ends in SystemExit)."""
    from r2f.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0)


def _cli(capsys, *args: object) -> tuple[int, str, list[str]]:
    """(exit code, stdout, non-empty stderr lines) of an in-process CLI run."""
    capsys.readouterr()
    code = _exit_code(*args)
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def setup(world_dir, tmp_path_factory):
    """The trained tiny model, two one-author requests, a utility file, and a ledger with both applied."""
    from r2f.models.training import train_model

    root = tmp_path_factory.mktemp("ledger")
    model = train_model(world_dir, size="tiny", split="full")
    lines = (world_dir / "retain90.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    second = root / "request2.jsonl"
    second.write_text("".join(lines[:8]), encoding="utf-8")  # the first retain author: 8 items
    utility = root / "utility.jsonl"
    utility.write_text("".join(lines[8:16]), encoding="utf-8")
    source_before = _digest(model)
    ledger = root / "L"
    assert _exit_code("ledger", "init", "--model", model, "--out", ledger) == 0
    assert _exit_code("ledger", "apply", ledger, "--forget", world_dir / "forget01.jsonl", "--method", "grad_ascent",
                      "--steps", "2", "--utility", utility) == 0
    assert _exit_code("ledger", "apply", ledger, "--forget", second, "--method", "npo", "--retain",
                      world_dir / "retain90.jsonl", "--utility", utility, "--steps", "1", "--save-every", "1") == 0
    return {"model": model, "ledger": ledger, "second": second, "utility": utility, "root": root,
            "source_before": source_before, "world": world_dir}


@pytest.fixture
def copy(setup, tmp_path):
    """A private copy of the module's ledger (its source model stays where init found it)."""
    dst = tmp_path / "L"
    shutil.copytree(setup["ledger"], dst)
    return dst


def test_show_json_lists_the_chain_oldest_first_and_each_version_loads(setup, capsys):
    from transformers import AutoModelForCausalLM

    from r2f import ledger

    code, out, err = _cli(capsys, "ledger", "show", setup["ledger"], "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["index"] for r in rows] == [1, 2] and [r["method"] for r in rows] == ["grad_ascent", "npo"]
    init = ledger.read_init(setup["ledger"])
    assert rows[0]["parent"] == init["source"]["fingerprint"] and rows[1]["parent"] == rows[0]["child"]
    assert rows[0]["child"] != rows[1]["child"]
    assert rows[0]["request_sha256"] == hashlib.sha256((setup["world"] / "forget01.jsonl").read_bytes()).hexdigest()
    assert rows[1]["request_sha256"] == hashlib.sha256(setup["second"].read_bytes()).hexdigest()
    for r in rows:
        assert Path(r["path"]).is_dir() and AutoModelForCausalLM.from_pretrained(r["path"]) is not None
        assert not (Path(r["path"]) / "checkpoints").exists()  # the run's checkpoints are not part of a version
    assert _digest(setup["model"]) == setup["source_before"]  # the source is only read
    assert not (setup["ledger"] / "pending").exists()
    # the second entry's record: this request, the first request again, the utility file, before and after
    v = ledger.entries(setup["ledger"])[1]["verification"]
    assert v["request"]["before"]["items"] == 8 and set(v["request"]["after"]) >= {"rougeL_recall", "answer_nll"}
    assert [row["entry"] for row in v["earlier"]] == [1]
    first = ledger.entries(setup["ledger"])[0]["verification"]
    assert v["earlier"][0]["before"] == first["request"]["after"]  # the parent's numbers, measured once
    assert v["utility"][0]["name"] == "utility.jsonl" and v["utility"][0]["before"] == first["utility"][0]["after"]
    assert ledger.entries(setup["ledger"])[1]["config"]["method"] == "npo"


def test_verify_passes_and_prints_the_head(setup, capsys):
    from r2f import ledger

    code, out, err = _cli(capsys, "ledger", "verify", setup["ledger"])
    assert code == 0, err
    assert "2 entries" in out and ledger.head(setup["ledger"]) in out


@pytest.mark.parametrize("where, entry, named", [
    ("entries/0001/model/model.safetensors", "entry 1", "model.safetensors"),
    ("entries/0002/model/config.json", "entry 2", "config.json"),
    ("entries/0002/request/forget.jsonl", "entry 2", "request/forget.jsonl"),
])
def test_one_changed_byte_fails_verify_naming_the_entry(copy, capsys, where, entry, named):
    path = copy / where
    _flip_byte(path, path.stat().st_size // 2)
    code, _, err = _cli(capsys, "ledger", "verify", copy)
    assert code == 1
    assert len(err) == 1 and f"{entry} " in err[0] and named in err[0], err


def test_an_edited_record_breaks_the_chain(copy, capsys):
    from r2f import ledger

    path = copy / "entries/0001/entry.json"
    rec = json.loads(path.read_text())
    rec["verification"]["request"]["after"]["rougeL_recall"] = 0.0
    path.write_text(json.dumps(rec, indent=2))
    code, _, err = _cli(capsys, "ledger", "verify", copy)
    assert code == 1 and any("entry 1" in ln and "record changed" in ln for ln in err), err
    rec["hash"] = ledger.record_hash(rec)  # a forger who also rewrites the hash breaks the next link
    path.write_text(json.dumps(rec, indent=2))
    code, _, err = _cli(capsys, "ledger", "verify", copy)
    assert code == 1 and len(err) == 1 and "entry 2" in err[0] and "chain broken" in err[0], err


def test_a_tampered_ledger_refuses_a_new_request(copy, setup, capsys):
    _flip_byte(copy / "entries/0001/model/model.safetensors", 100)
    code, _, err = _cli(capsys, "ledger", "apply", copy, "--forget", setup["second"], "--method", "grad_ascent",
                        "--steps", "1")
    assert code == 2 and len(err) == 1 and "entry 1" in err[0]
    assert sorted(p.name for p in (copy / "entries").iterdir()) == ["0001", "0002"]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(copy, setup, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Who?", "answer": "Me."}\n{"question": "Where?"}\n')
    before = _digest(copy)
    cases = [
        (("--forget", tmp_path / "missing.jsonl", "--method", "grad_ascent"), "missing.jsonl"),
        (("--forget", bad, "--method", "grad_ascent"), f"{bad}:2"),
        (("--forget", setup["second"], "--method", "no_such"), "--method"),
        (("--forget", setup["second"], "--method", "grad_ascent", "-o", "bogus=1"), "bogus"),
        (("--forget", setup["second"], "--method", "grad_ascent", "--utility", bad), f"{bad}:2"),
        (("--forget", setup["second"], "--method", "grad_ascent", "--resume"), "pending"),
    ]
    for args, named in cases:
        code, _, err = _cli(capsys, "ledger", "apply", copy, *args, "--steps", "1")
        assert code == 2 and len(err) == 1 and named in err[0], (args, err)
    code, _, err = _cli(capsys, "ledger", "apply", tmp_path, "--forget", setup["second"])
    assert code == 2 and len(err) == 1 and "not an r2f ledger" in err[0]
    code, _, err = _cli(capsys, "ledger", "init", "--model", tmp_path / "nomodel", "--out", tmp_path / "L2")
    assert code == 2 and len(err) == 1 and "nomodel" in err[0] and not (tmp_path / "L2").exists()
    code, _, err = _cli(capsys, "ledger", "init", "--model", setup["model"], "--out", copy)
    assert code == 2 and "--overwrite" in err[0]
    assert _digest(copy) == before and not (copy / "pending").exists()


def test_interrupted_apply_leaves_no_entry_and_resumes(copy, setup, capsys, monkeypatch):
    from r2f import ledger

    before = _digest(copy)
    calls = {"n": 0}
    real = ledger.request_metrics

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # after unlearning, while measuring
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "request_metrics", interrupted)
    forget = setup["world"] / "retain90.jsonl"  # any file: 288 items, one step
    argv = ["ledger", "apply", str(copy), "--forget", str(forget), "--method", "grad_ascent", "--steps", "1"]
    with pytest.raises(KeyboardInterrupt):
        ledger.apply(copy, forget, "grad_ascent", steps=1)
    # the ledger is as it was: no entry, no half-written directory; the finished run waits in pending/
    assert sorted(p.name for p in (copy / "entries").iterdir()) == ["0001", "0002"]
    assert {k: v for k, v in _digest(copy).items() if not k.startswith("pending/")} == before
    assert ledger.verify(copy)["ok"]
    from r2f.commands.ledger import interrupted_line

    line = interrupted_line(argv)  # the CLI's Ctrl-C line for this command
    assert "unchanged" in line and line.endswith("--resume") and "pending" in line
    monkeypatch.setattr(ledger, "request_metrics", real)
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and "--resume" in err[0]  # a new apply does not discard it silently
    code, _, err = _cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert ledger.show(copy)[-1]["index"] == 3 and ledger.verify(copy)["ok"] and not (copy / "pending").exists()


def test_a_failed_commit_leaves_no_entry(copy, setup, monkeypatch):
    from r2f import ledger

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ledger, "write_json_atomic", broken)
    with pytest.raises(OSError):
        ledger.apply(copy, setup["second"], "grad_ascent", steps=1, utility=[])
    assert sorted(p.name for p in (copy / "entries").iterdir()) == ["0001", "0002"]
    assert ledger.verify(copy)["ok"] and (copy / "pending/model/model.safetensors").is_file()
    monkeypatch.undo()
    entry = ledger.apply(copy, setup["second"], "grad_ascent", steps=1, resume=True)
    assert entry["index"] == 3 and ledger.verify(copy)["ok"]


def test_a_changed_source_is_named_by_verify_and_refused_by_apply(setup, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(setup["model"], src)
    ledger_dir = tmp_path / "L"
    assert _exit_code("ledger", "init", "--model", src, "--out", ledger_dir) == 0
    _flip_byte(src / "model.safetensors", 200)
    code, _, err = _cli(capsys, "ledger", "verify", ledger_dir)
    assert code == 1 and any("init" in ln and "model.safetensors" in ln for ln in err), err
    code, _, err = _cli(capsys, "ledger", "apply", ledger_dir, "--forget", setup["second"], "--method", "grad_ascent")
    assert code == 2 and len(err) == 1 and "source model changed" in err[0]
    shutil.rmtree(src)  # an auditor without the source: a note, not a failure
    code, _, err = _cli(capsys, "ledger", "verify", ledger_dir)
    assert code == 0 and any(ln.startswith("note:") for ln in err)


def test_report_plots_the_sequence(copy, capsys):
    from r2f import ledger

    table = ledger.sequence_table(copy)
    assert table["entries"] == 2 and [x for x, _ in table["forget_rouge"]["1"]] == [0, 1, 2]
    assert [x for x, _ in table["utility_rouge"]["utility.jsonl"]] == [0, 1, 2]
    code, out, _ = _cli(capsys, "ledger", "report", copy)
    html = (copy / "report.html").read_text()
    assert code == 0 and "data:image/png;base64," in html and "npo" in html
    assert ledger.verify(copy)["ok"]  # the report is not part of what verify checks


def test_each_request_is_judged_against_the_nll_of_shuffled_answers(copy, setup, capsys):
    """The verdict: a request is forgotten once its answers' NLL reaches its bar, the parent's NLL of the request's
    questions with each other's answers — the same number R2F's own stop rule computes on the same model (another
    code path: the engine's encoder, not r2f.eval's scoring). A request left as it was is said to be not
    forgotten, on stderr, and the entry is committed all the same."""
    from r2f import ledger

    # --no-renew: the run forgets this request alone, so its stop threshold is this request's bar
    code, _, err = _cli(capsys, "ledger", "apply", copy, "--forget", setup["world"] / "forget01.jsonl",
                        "--method", "exact", "--steps", "2", "--no-renew")
    assert code == 0, err
    entry = ledger.entries(copy)[-1]
    assert entry["renewed"] == []
    req = entry["verification"]["request"]
    manifest = json.loads((copy / entry["child"]["path"] / "manifest.json").read_text())
    assert req["bar"]["pairs"] == 8 and req["bar"]["answer_nll"] == pytest.approx(
        manifest["method_info"]["stop_threshold"], rel=1e-5)
    assert req["forgotten"] is (req["after"]["answer_nll"] >= req["bar"]["answer_nll"])
    assert [r["forgotten"] is not None for r in entry["verification"]["earlier"]] == [True, True]
    assert any("this request is not forgotten" in ln for ln in err) is (not req["forgotten"])

    # a step of 1e-12 leaves the answers as they were: far below wrong answers' NLL, so not forgotten
    code, out, err = _cli(capsys, "ledger", "apply", copy, "--forget", setup["second"], "--method", "grad_ascent",
                          "--lr", "1e-12", "--steps", "1")
    entry = ledger.entries(copy)[-1]
    req = entry["verification"]["request"]
    assert code == 0 and entry["index"] == 4 and req["forgotten"] is False
    assert req["after"]["answer_nll"] < req["bar"]["answer_nll"]
    assert err[0].startswith("r2f: warning: entry 4: this request is not forgotten: its answers' NLL "), err
    lost = [r["entry"] for r in entry["verification"]["earlier"] if r["forgotten"] is False]
    assert err[1:] == (["r2f: warning: entry 4: earlier requests whose answers are likelier again than wrong ones "
                        f"(NLL below the bar of their own entry): {ledger.relapsed_text(entry['verification'])}"]
                       if lost else []), err
    code, out, _ = _cli(capsys, "ledger", "show", copy)
    assert code == 0 and "forgotten NO (NLL" in out.splitlines()[3]
    assert ledger.verify(copy)["ok"]

    # renewal: the next apply forgets entry 4's request again with its own (and any earlier one not forgotten):
    # the run's forget data are the union; the same apply with --no-renew, on a copy, forgets the request alone.
    # (What renewal does to a relapsed request is measured on `small`: benchmarks/ledger_sequence.py; on the tiny
    # model gradient ascent on one author raises every author's NLL alike.)
    due = ledger.renewal_due(ledger.entries(copy))
    assert 4 in due and due == sorted(lost + [4])
    control = copy.parent / "control"
    shutil.copytree(copy, control)
    runs = {}
    for where, flags in ((copy, ()), (control, ("--no-renew",))):
        code, out, err = _cli(capsys, "ledger", "apply", where, "--forget", setup["world"] / "forget01.jsonl",
                              "--method", "grad_ascent", "--steps", "1", *flags)
        assert code == 0, err
        entry = ledger.entries(where)[-1]
        manifest = json.loads((where / entry["child"]["path"] / "manifest.json").read_text())
        row4 = next(r for r in entry["verification"]["earlier"] if r["entry"] == 4)
        runs[where] = (entry, out, manifest["data"]["forget"]["items"], row4)
    (entry, out, items, row4), (c_entry, c_out, c_items, c_row4) = runs[copy], runs[control]
    assert entry["renewed"] == due and f"forgot again: {ledger.entries_text(due)}" in out
    assert c_entry["renewed"] == [] and "forgot again" not in c_out
    assert (items, c_items) == (8 + 8 * len(due), 8)  # one-author requests of 8 items each
    assert row4["before"] == c_row4["before"]  # the same parent, measured once per ledger
    assert entry["request_sha256"] == c_entry["request_sha256"] == hashlib.sha256(
        (setup["world"] / "forget01.jsonl").read_bytes()).hexdigest()
    assert ledger.show(copy)[-1]["renewed"] == due and ledger.verify(copy)["ok"]
    assert not (copy / "pending").exists()


def test_relapsed_requests_are_named_from_the_verification_record():
    from r2f import ledger

    rows = [{"entry": 1, "forgotten": True}, {"entry": 2, "forgotten": False}, {"entry": 3, "forgotten": False}]
    assert ledger.relapsed_text({"earlier": rows}) == "entries 2, 3"
    assert ledger.relapsed_text({"earlier": rows[:2]}) == "entry 2"
    assert ledger.relapsed_text({"earlier": rows[:1]}) == "none"
    assert ledger.relapsed_text({"earlier": [{"entry": 1}]}) == "–"  # a ledger written before verdicts
    assert ledger.is_forgotten({"answer_nll": 2.0}, {"answer_nll": 2.0}) is True
    assert ledger.is_forgotten({"answer_nll": 1.9}, {"answer_nll": 2.0}) is False
    assert ledger.is_forgotten({"answer_nll": 1.9}, None) is None
