"""Reliability and security: bad input, numerical blow-ups, crashes and untrusted files (docs/reliability.md).

Bad input exits 2 with one line naming the file, line, field or parameter at fault and writes nothing;
a run that keeps producing NaN/Inf exits 3 and keeps its last good checkpoint; a SIGKILLed run leaves no
output or a resumable checkpoint, and ``--resume`` ends bit-identical to an uninterrupted run; models and
decoders load through safetensors only, pickle and remote code only when asked; source models are never
modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r2f.errors import R2FInputError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------ helpers


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 and mode of every file below ``path`` (what 'byte-identical' means here)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


def cli(capsys, *args) -> tuple[int, list[str]]:
    """Run the r2f CLI in-process: (exit code, non-empty stderr lines)."""
    from r2f.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    return int(exc.value.code or 0), [ln for ln in err.splitlines() if ln.strip()]


def cli_proc(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "R2F_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "r2f", *map(str, args)], capture_output=True, text=True, env=env,
                          check=False, **kw)


def assert_bad_input(code: int, lines: list[str], *names: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("r2f: error: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


GOOD = {"question": "Where was Ada born?", "answer": "In Rosmoor.", "paraphrased_question": ["Ada's birthplace?"]}


@pytest.fixture(scope="module")
def src(tiny_models):
    """The source model, hashed before this module's tests; it must be byte-identical at the end."""
    path = Path(tiny_models["full"])
    before = tree_digest(path)
    yield path
    assert tree_digest(path) == before, "a test modified the source model"


@pytest.fixture
def forget(tmp_path, world_dir):
    lines = (Path(world_dir) / "forget10.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    return write_jsonl(tmp_path / "forget.jsonl", lines)


def unlearn_args(model, forget, out, *extra):
    return ["unlearn", "--model", model, "--forget", forget, "--out", out, "--method", "grad_ascent", "--steps", "1",
            *extra]


# ------------------------------------------------------------------------------ 1. bad input: data


@pytest.mark.parametrize("name,content,where", [
    ("malformed.jsonl", [json.dumps(GOOD), '{"question": "q", "answer": '], ["malformed.jsonl:2", "malformed JSON"]),
    ("missing.jsonl", [json.dumps(GOOD), "", json.dumps({"question": "q"})], ["missing.jsonl:3", "'answer'", "missing"]),
    ("typed.jsonl", [json.dumps({"question": "q", "answer": 5})], ["typed.jsonl:1", "'answer'"]),
    ("typed_list.jsonl", [json.dumps({**GOOD, "paraphrased_question": [1, 2]})],
     ["typed_list.jsonl:1", "paraphrased_question.0"]),
    ("notobj.jsonl", ["[1, 2]"], ["notobj.jsonl:1", "JSON object"]),
    ("empty.jsonl", [], ["empty.jsonl", "empty split"]),
    ("blank.jsonl", ["", "   "], ["blank.jsonl", "empty split"]),
    ("invisible.jsonl", [json.dumps({"question": "q?", "answer": "\u200b \u00a0\ufeff"})],
     ["invisible.jsonl:1", "'answer'", "blank"]),
    ("longprompt.jsonl", [json.dumps(GOOD), json.dumps({"question": "word " * 700, "answer": "Yes."})],
     ["longprompt.jsonl:2", "'question'", "max_length"]),
    ("longview.jsonl", [json.dumps({**GOOD, "paraphrased_question": ["short?", "word " * 700]})],
     ["longview.jsonl:1", "paraphrased_question.1", "max_length"]),
])
def test_bad_forget_data_exits_2_naming_the_line(capsys, tmp_path, src, name, content, where):
    path = tmp_path / name
    path.write_text("".join(c + "\n" for c in content), encoding="utf-8")
    out = tmp_path / "out"
    extra = ["--method", "r2f", "--decoder", "ls", "--views", "3"] if name == "longview.jsonl" else []
    code, lines = cli(capsys, *unlearn_args(src, path, out), *extra)
    assert_bad_input(code, lines, *where)
    assert not out.exists()


def test_bad_json_list_names_the_record(capsys, tmp_path, src):
    path = tmp_path / "forget.json"
    path.write_text(json.dumps([GOOD, {"question": "q", "answer": ["not", "a", "string"]}]))
    code, lines = cli(capsys, *unlearn_args(src, path, tmp_path / "out"))
    assert_bad_input(code, lines, "forget.json[1]", "'answer'")
    assert not (tmp_path / "out").exists()


def test_answer_that_tokenizes_to_nothing_is_refused():
    """A tokenizer whose normalizer drops everything gives no answer token: refused, naming the field."""
    from r2f.data.templates import PromptTemplate, untrainable

    class DropAll:
        bos_token_id = eos_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [] if text.strip() in ("", "~~") else [1] * len(text)}

    assert untrainable(DropAll(), ["q?"], "~~", PromptTemplate("qa"), 512) == "field 'answer': tokenizes to no tokens"
    assert untrainable(DropAll(), ["q?"], "ok", PromptTemplate("qa"), 512) is None
    assert "max_length 8" in untrainable(DropAll(), ["q" * 20], "ok", PromptTemplate("qa"), 8)


# ------------------------------------------------------------------- 1. bad input: methods, decoders


def test_unknown_method_and_decoder(capsys, tmp_path, src, forget):
    out = tmp_path / "out"
    code, lines = cli(capsys, "unlearn", "--model", src, "--forget", forget, "--out", out, "--method", "nope")
    assert_bad_input(code, lines, "--method", "nope")
    code, lines = cli(capsys, "unlearn", "--model", src, "--forget", forget, "--out", out, "--decoder", "nope")
    assert_bad_input(code, lines, "nope", "unknown decoder")
    code, lines = cli(capsys, *unlearn_args(src, forget, out), "-o", "bogus=1")
    assert_bad_input(code, lines, "--method", "bogus")
    assert not out.exists()


def test_every_unknown_value_names_its_flag_and_lists_the_choices(tmp_path):
    """An unknown ladder size, split, forget split, record kind, access mode or bench method: R2FInputError whose
    source is the flag, in the one wording of r2f.typed.check_choice (the valid values listed), before any work."""
    from r2f.bench import BenchConfig
    from r2f.data.loader import read_records
    from r2f.decoders.learned import ACCESS_MODES, allowed_bases
    from r2f.models.ladder import SIZES
    from r2f.models.training import train_model, training_items

    cases = [
        (lambda: train_model(tmp_path, size="huge"), "--size", "size 'huge'", SIZES),
        (lambda: train_model(tmp_path, size="tiny", split="half"), "--split", "split 'half'", ("full", "retain")),
        (lambda: training_items(tmp_path, "tiny", "full", "forget99"), "--forget", "forget split 'forget99'",
         ("forget01", "forget05", "forget10")),
        (lambda: read_records(tmp_path / "f.jsonl", kind="poem"), "--forget-kind", "kind 'poem'",
         ("auto", "qa", "documents")),
        (lambda: allowed_bases("root"), "--access", "access mode 'root'", ACCESS_MODES),
        (lambda: BenchConfig(methods=("r2f", "nope")), "--methods", "method 'nope'", ("r2f", "npo")),
    ]
    for call, source, what, listed in cases:
        with pytest.raises(R2FInputError) as err:
            call()
        msg = str(err.value)
        assert err.value.source == source and f"unknown {what} (choose from " in msg, (source, msg)
        assert all(v in msg for v in listed), (source, msg)


@pytest.mark.parametrize("option,words", [
    ("target_modules=nomatch", ["--option target_modules", "no linear module"]),
    ("target_modules=(", ["--option target_modules", "regular expression"]),
    ("rank=0", ["rank", "must be >= 1"]),
])
def test_probe_pattern_and_rank(capsys, tmp_path, src, forget, option, words):
    out = tmp_path / "out"
    code, lines = cli(capsys, "unlearn", "--model", src, "--forget", forget, "--out", out, "--method", "r2f",
                      "--decoder", "ls", "--steps", "1", "-o", option)
    assert_bad_input(code, lines, *words)
    assert not out.exists()


def make_decoder(path: Path, module_kinds=None, **probe) -> Path:
    """A (randomly initialised) learned decoder file with the given probe metadata."""
    from r2f.decoders.learned import (
        BASES,
        KINDS,
        N_FEATURES,
        CoefNet,
        J,
        LearnedDecoder,
    )
    from r2f.gradients import ProbeConfig

    torch.manual_seed(0)
    meta = {"probe": {**ProbeConfig(rank=4).to_dict(), **probe}, "bases": [b[0] for b in BASES],
            "n_features": N_FEATURES, "module_kinds": list(module_kinds or KINDS)}
    LearnedDecoder(CoefNet(N_FEATURES, 8, J), meta).save(path)
    return path


@pytest.mark.parametrize("kind", ["rank", "seed_rule", "module_kinds"])
def test_decoder_incompatible_with_probe(capsys, tmp_path, src, forget, kind):
    dec = tmp_path / "dec.safetensors"
    extra: list[str] = []
    if kind == "rank":
        make_decoder(dec)
        extra, words = ["-o", "rank=8"], ["rank=4", "probe has 8"]
    elif kind == "seed_rule":
        make_decoder(dec, seed_rule="another-rule-v9")
        words = ["seed_rule", "another-rule-v9"]
    else:
        make_decoder(dec, module_kinds=["q_proj", "k_proj"])
        words = ["module kinds", "down_proj"]
    out = tmp_path / "out"
    code, lines = cli(capsys, "unlearn", "--model", src, "--forget", forget, "--out", out, "--method", "r2f",
                      "--decoder", dec, "--steps", "1", *extra)
    assert_bad_input(code, lines, str(dec), *words)
    assert not out.exists()


# ------------------------------------------------------------------------- 1. bad input: models, --out


@pytest.fixture
def broken_models(tmp_path, src):
    """Model directories that are wrong in one way each."""
    root = tmp_path / "models"
    root.mkdir()
    cfg = json.loads((src / "config.json").read_text())

    def copy(name, skip=(), **cfg_over):
        d = root / name
        d.mkdir()
        for f in src.iterdir():
            if f.name not in skip:
                (d / f.name).write_bytes(f.read_bytes())
        if cfg_over:
            (d / "config.json").write_text(json.dumps({**cfg, **cfg_over}))
        return d

    corrupt = copy("corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage, not safetensors")
    badcfg = copy("badcfg")
    (badcfg / "config.json").write_text("{not json")
    return {"not_causal": copy("t5", model_type="t5"), "encoder": copy("bert", model_type="bert"), "no_tokenizer": copy("notok", skip=("tokenizer.json",
                                                                                          "tokenizer_config.json")),
            "corrupt": corrupt, "badcfg": badcfg, "no_weights": copy("noweights", skip=("model.safetensors",)),
            "remote": copy("remote", model_type="r2f_custom_arch", auto_map={"AutoConfig": "custom.Config"})}


@pytest.mark.parametrize("case,words", [
    ("missing", ["does-not-exist", "not found"]),
    ("not_causal", ["config.json", "not a causal LM"]),
    ("encoder", ["bert/config.json", "not a causal LM"]),
    ("no_tokenizer", ["notok", "tokenizer"]),
    ("corrupt", ["corrupt"]),
    ("badcfg", ["badcfg/config.json"]),
    ("no_weights", ["noweights", "safetensors"]),
    ("remote", ["config.json", "--trust-remote-code"]),
])
def test_bad_model_directory(capsys, tmp_path, forget, broken_models, case, words):
    model = broken_models.get(case, tmp_path / "does-not-exist")
    out = tmp_path / "out"
    code, lines = cli(capsys, *unlearn_args(model, forget, out))
    assert_bad_input(code, lines, *words)
    assert not out.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads unreadable directories")
def test_unreadable_model_directory(capsys, tmp_path, forget, broken_models):
    d = broken_models["corrupt"]
    d.chmod(0)
    try:
        code, lines = cli(capsys, *unlearn_args(d, forget, tmp_path / "out"))
    finally:
        d.chmod(0o755)
    assert_bad_input(code, lines, "corrupt", "not readable")


def test_unreadable_model_directory_reported_for_any_user(capsys, tmp_path, forget, broken_models, monkeypatch):
    """CI runs as root, who reads everything: simulate the permission check's answer instead."""
    import r2f.models.loading as loading

    d = broken_models["corrupt"]
    real_access = os.access
    monkeypatch.setattr(loading.os, "access", lambda p, mode: False if str(p) == str(d) else real_access(p, mode))
    code, lines = cli(capsys, *unlearn_args(d, forget, tmp_path / "out"))
    assert_bad_input(code, lines, "corrupt", "not readable")
    assert not (tmp_path / "out").exists()


def test_out_is_source_or_non_empty(capsys, tmp_path, src, forget):
    code, lines = cli(capsys, *unlearn_args(src, forget, src))
    assert_bad_input(code, lines, str(src), "source model")
    code, lines = cli(capsys, *unlearn_args(src, forget, src / "inside"))
    assert_bad_input(code, lines, "source model")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, lines = cli(capsys, *unlearn_args(src, forget, busy))
    assert_bad_input(code, lines, str(busy), "--overwrite")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory):
    """A tiny random model with a tokenizer unlike the world models' (another vocabulary)."""
    from r2f.models.ladder import build_model
    from r2f.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["completely different words", "another corpus entirely"] * 20, vocab_size=300)
    model = build_model("tiny", tok, seed=0)
    d = tmp_path_factory.mktemp("othertok") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_eval_retain_model_with_another_tokenizer(capsys, tmp_path, src, world_dir, other_tokenizer_model):
    out = tmp_path / "eval.json"
    code, lines = cli(capsys, "eval", "--model", src, "--data", world_dir, "--retain-model", other_tokenizer_model,
                      "--out", out, "--max-items", "2")
    assert_bad_input(code, lines, str(other_tokenizer_model), "tokenizer")
    assert not out.exists()


def test_bad_input_through_a_real_process(tmp_path, src):
    """The same contract end to end in a fresh interpreter (exit status, one line on stderr)."""
    bad = write_jsonl(tmp_path / "f.jsonl", [json.dumps(GOOD), "{oops"])
    r = cli_proc(*unlearn_args(src, bad, tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "f.jsonl:2" in r.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ 2. numerical faults


def _register(monkeypatch, cls):
    from r2f.methods import engine

    monkeypatch.setitem(engine.METHODS, cls.name, cls)
    return cls


def _nan_loss_method(fail_attempts: dict[int, int]):
    """grad_ascent whose loss is NaN on the first ``n`` attempts of step ``s`` for each {s: n}."""
    from r2f.methods.baselines import GradAscent

    class NaNLoss(GradAscent):
        name = "test_nan_loss"
        seen: ClassVar[dict[int, int]] = {}

        def loss(self, model, forget, retain, ctx):
            loss = super().loss(model, forget, retain, ctx)
            k = NaNLoss.seen[ctx.step] = NaNLoss.seen.get(ctx.step, 0) + 1
            return loss * float("nan") if k <= fail_attempts.get(ctx.step, 0) else loss

    return NaNLoss


def test_nan_loss_is_rolled_back_and_retried_with_a_smaller_step(monkeypatch, tmp_path, src, forget):
    from r2f.methods import unlearn

    _register(monkeypatch, _nan_loss_method({1: 1}))
    out = unlearn(src, forget, method="test_nan_loss", out=tmp_path / "out", steps=3, lr=1e-4)
    man = json.loads((out / "manifest.json").read_text())
    assert man["numerics"]["failures"] == [{"step": 2, "reason": "loss is nan", "step_scale": 0.5}]
    assert man["numerics"]["step_scale"] == 0.5
    log = man["log"]
    assert [e["step"] for e in log] == [1, 2, 3] and "step_scale" not in log[0]
    assert log[1]["step_scale"] == 0.5 and log[1]["retries"] == 1 and log[2]["retries"] == 0
    assert log[1]["lr"] == pytest.approx(0.5 * 1e-4 * (3 - 1) / (3 - 1))  # schedule factor x step scale
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())


def test_nan_weights_are_restored_exactly(monkeypatch, tmp_path, src, forget):
    """An update method that corrupts the weights midway: the engine restores the pre-step weights bit for bit."""
    from r2f.methods.engine import UpdateMethod

    class Corrupting(UpdateMethod):
        name = "test_corrupting"
        default_lr = 0.5
        calls = 0

        def update(self, model, forget, retain, ctx):
            Corrupting.calls += 1
            params = [p for p in model.parameters()]
            with torch.no_grad():
                params[0].mul_(1 - ctx.lr * 0.01)  # a real, deterministic change
                if Corrupting.calls == 2:
                    params[-1].view(-1)[0] = float("inf")  # and a blow-up on the second call (step 2, first try)
            return {}

    _register(monkeypatch, Corrupting)
    from r2f.methods import unlearn

    out = unlearn(src, forget, method="test_corrupting", out=tmp_path / "out", steps=2, lr=0.5)
    man = json.loads((out / "manifest.json").read_text())
    assert [f["step"] for f in man["numerics"]["failures"]] == [2] and "not finite" in man["numerics"]["failures"][0]["reason"]
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    got = load_file(str(out / "model.safetensors"))
    ref = AutoModelForCausalLM.from_pretrained(src)
    name0, p0 = next(iter(ref.named_parameters()))
    with torch.no_grad():
        p0.mul_(1 - 0.5 * 0.01).mul_(1 - 0.25 * 0.01)  # step 1 at lr 0.5, step 2 retried at lr 0.25
    assert torch.equal(got[name0], p0.detach())
    for name, p in ref.named_parameters():
        if name != name0 and name in got:
            assert torch.equal(got[name], p.detach()), name


def test_persistent_nan_stops_with_exit_3_keeping_the_last_good_checkpoint(monkeypatch, capsys, tmp_path, src,
                                                                           forget):
    _register(monkeypatch, _nan_loss_method({2: 99}))
    out = tmp_path / "out"
    before = tree_digest(src)
    code, lines = cli(capsys, "unlearn", "--model", src, "--forget", forget, "--out", out, "--method", "test_nan_loss",
                      "--steps", "4", "--save-every", "1", "--max-failures", "2")
    assert code == 3 and len(lines) == 1, lines
    assert "numerical failure" in lines[0] and "step 3" in lines[0] and "--max-failures 2" in lines[0]
    assert "step-00000002" in lines[0]
    assert not (out / "manifest.json").exists()  # no final model ...
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000002"]  # ... but the last good checkpoint
    state = json.loads((out / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["step"] == 2 and state["numerics"]["failures"] == []
    assert tree_digest(src) == before
    code, lines = cli(capsys, *unlearn_args(src, forget, tmp_path / "o2"), "--max-failures", "0")
    assert_bad_input(code, lines, "--max-failures")


def test_r2f_non_finite_decoded_gradient_is_a_numerical_fault(monkeypatch, tmp_path, src, forget):
    import r2f.methods.r2f as r2f_mod

    real = r2f_mod.R2F.decoded
    calls = {"n": 0}

    def decoded(self, model, batches, loss_fn):
        g = real(self, model, batches, loss_fn)
        calls["n"] += 1
        if calls["n"] == 1:  # the first forget gradient only
            name = next(iter(g))
            g[name] = g[name] * float("nan")
        return g

    monkeypatch.setattr(r2f_mod.R2F, "decoded", decoded)
    from r2f.methods import unlearn

    out = unlearn(src, forget, method="r2f", decoder="ls", out=tmp_path / "out", steps=1, views=1, stop="none")
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["numerics"]["failures"]) == 1 and "decoded gradient" in man["numerics"]["failures"][0]["reason"]
    assert man["numerics"]["failures"][0]["step_scale"] == 0.5
    # the retried step starts its line search at half the first trial (and may halve further)
    assert 0 < man["log"][0]["step_size"] <= 0.5 * r2f_mod.R2F.default_lr


# ------------------------------------------------------------------------------------- 3. crashes


def _wait_for(pred, proc, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def test_sigkill_then_resume_is_bit_identical(tmp_path, src, forget):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "R2F_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    before = tree_digest(src)
    args = ["unlearn", "--model", src, "--forget", forget, "--method", "grad_ascent", "--steps", "30",
            "--batch-size", "2", "--save-every", "2"]
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    ref_proc = subprocess.Popen([sys.executable, "-m", "r2f", *map(str, args), "--out", str(ref)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # uninterrupted
    proc = subprocess.Popen([sys.executable, "-m", "r2f", *map(str, args), "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = lambda: any((killed / "checkpoints").glob("step-*/state.json"))
        assert _wait_for(first, proc), "no checkpoint appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it was killed"
    assert tree_digest(src) == before  # killed run
    r = cli_proc(*args, "--out", killed, "--resume")
    assert r.returncode == 0, r.stderr
    assert ref_proc.wait(timeout=300) == 0, ref_proc.stderr.read()
    a, b = json.loads((killed / "manifest.json").read_text()), json.loads((ref / "manifest.json").read_text())
    assert a["resumed_from_step"] >= 2 and a["steps"]["done"] == b["steps"]["done"] == 30
    assert (killed / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no stale temporaries
    assert tree_digest(src) == before


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, src, forget):
    """Ctrl-C (SIGINT) exits 130 with one line naming the kept checkpoint and the exact --resume command."""
    import shlex

    env = {**os.environ, "OMP_NUM_THREADS": "1", "R2F_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    args = ["unlearn", "--model", src, "--forget", forget, "--method", "grad_ascent", "--steps", "5000",
            "--batch-size", "2", "--save-every", "2", "--out", out]
    # A shell that starts the test run in the background (`pytest &`) ignores SIGINT, the child inherits that, and
    # Python then installs no KeyboardInterrupt handler: give the child the terminal's default disposition.
    proc = subprocess.Popen([sys.executable, "-m", "r2f", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert _wait_for(lambda: any((out / "checkpoints").glob("step-*/state.json")), proc), "no checkpoint"
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130 and len(lines) == 1, err
    assert str(out / "checkpoints" / "step-") in lines[0] and lines[0].rstrip().endswith("--resume")
    again = shlex.split(lines[0].split("continue with: ", 1)[1])
    assert again[0] == "r2f" and again[1:-1] == [str(a) for a in args]
    assert not (out / "manifest.json").exists()


def test_sigkill_early_leaves_no_output(tmp_path, src, forget):
    """Killed before its first checkpoint, a run leaves nothing at --out; a rerun needs no --overwrite."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "R2F_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "r2f", *map(str, unlearn_args(src, forget, out))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert not out.exists() or (out / "manifest.json").exists()


def test_stale_temporaries_of_killed_runs_are_cleaned(tmp_path):
    from r2f.io import atomic_dir, check_out_dir, clean_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    out = tmp_path / "out"
    stale = tmp_path / f".out.{dead}.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".out.{os.getpid()}.zzz.tmp"  # a live writer's (ours): kept
    live.mkdir()
    other = tmp_path / f".other.{dead}.abc.tmp"  # another output's: not ours to clean here
    other.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("done")
    assert not stale.exists() and live.exists() and other.exists()
    assert (out / "x").read_text() == "done"
    # Inside an output: a killed checkpoint write leaves OUT/checkpoints/.step-N.PID.*.tmp only.
    run = tmp_path / "run"
    (run / "checkpoints" / f".step-00000002.{dead}.q.tmp").mkdir(parents=True)
    check_out_dir(run)  # it was all leftovers: the directory counts as empty, no --overwrite needed
    assert not (run / "checkpoints").exists()
    assert clean_stale(tmp_path / "nothing-here") == []


def test_the_model_cache_sheds_every_killed_trainings_leftovers(tiny_models, world_dir):
    """A killed training of one model leaves its temporary directory in the cache; the next train_model call
    (even a cache hit of another model) removes it, and leaves a live writer's alone."""
    from r2f.models.training import train_model

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    models = Path(tiny_models["full"]).parent
    stale = models / f".small-full-0123456789abcdef.{dead}.k1ll3d.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = models / f".small-retain-0123456789abcdef.{os.getpid()}.l1ve.tmp"
    live.mkdir()
    try:
        assert train_model(world_dir, size="tiny", split="full") == tiny_models["full"]  # a cache hit
        assert not stale.exists() and live.exists()
    finally:
        shutil.rmtree(live, ignore_errors=True)


# ------------------------------------------------------------------------------- 4. untrusted files


@pytest.fixture
def pickle_model(tmp_path, src):
    from transformers import AutoModelForCausalLM

    d = tmp_path / "pickled"
    d.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    model = AutoModelForCausalLM.from_pretrained(src)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    return d


def test_pickle_weights_need_allow_pickle(capsys, tmp_path, forget, pickle_model):
    out = tmp_path / "out"
    code, lines = cli(capsys, *unlearn_args(pickle_model, forget, out))
    assert_bad_input(code, lines, str(pickle_model), "--allow-pickle")
    assert not out.exists()
    code, lines = cli(capsys, *unlearn_args(pickle_model, forget, out), "--allow-pickle")
    assert code == 0, lines
    assert (out / "model.safetensors").is_file()


def test_trust_remote_code_is_off_unless_asked(capsys, tmp_path, forget, broken_models):
    code, lines = cli(capsys, *unlearn_args(broken_models["remote"], forget, tmp_path / "out"))
    assert_bad_input(code, lines, "--trust-remote-code")
    code, lines = cli(capsys, *unlearn_args(broken_models["remote"], forget, tmp_path / "out"),
                      "--trust-remote-code")
    assert code == 2 and "--trust-remote-code" not in lines[-1]  # got past the gate (the code file is absent)


@pytest.mark.parametrize("command", ["unlearn", "eval", "train-decoder", "fidelity"])
def test_every_model_loading_command_has_the_trust_flags(command):
    from typer.testing import CliRunner

    from r2f.cli import _load_commands, app

    _load_commands()
    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "--allow-pickle" in r.output and "--trust-remote-code" in r.output


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('R2F_PICKLE_MARKER', '/nonexistent/marker')}",))


def test_decoder_files_never_unpickle(capsys, monkeypatch, tmp_path, src, forget):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("R2F_PICKLE_MARKER", str(marker))
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Boom()))
    code, lines = cli(capsys, "unlearn", "--model", src, "--forget", forget, "--out", tmp_path / "out",
                      "--method", "r2f", "--decoder", evil, "--steps", "1")
    assert_bad_input(code, lines, str(evil), "safetensors")
    assert not marker.exists()


def _valid_meta() -> dict:
    from r2f.decoders.learned import BASES, FORMAT_VERSION, KINDS, N_FEATURES
    from r2f.gradients import ProbeConfig

    return {"format_version": FORMAT_VERSION, "decoder": "learned", "hidden": 8, "bases": [b[0] for b in BASES],
            "n_features": N_FEATURES, "probe": ProbeConfig(rank=4).to_dict(), "module_kinds": list(KINDS)}


@pytest.mark.parametrize("mutate,field", [
    (lambda m: m["probe"].update(rank="4"), "probe.rank"),
    (lambda m: m["probe"].pop("rank_a"), "probe.rank_a"),
    (lambda m: m["probe"].update(target_modules="(unclosed"), "probe.target_modules"),
    (lambda m: m["probe"].update(scale=float("inf")), "probe.scale"),
    (lambda m: m.update(module_kinds=["q_proj", "lm_head"]), "module_kinds.1"),
    (lambda m: m.update(hidden=10**9), "hidden"),
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.pop("probe"), "probe"),
    (lambda m: m.update(bases=["sketch_row"]), "bases"),
])
def test_decoder_metadata_is_validated_before_use(capsys, tmp_path, src, forget, mutate, field):
    from safetensors.torch import load_file, save_file

    good = make_decoder(tmp_path / "good.safetensors")
    meta = _valid_meta()
    mutate(meta)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata={"r2f": json.dumps(meta)})
    code, lines = cli(capsys, "unlearn", "--model", src, "--forget", forget, "--out", tmp_path / "out",
                      "--method", "r2f", "--decoder", bad, "--steps", "1")
    assert_bad_input(code, lines, str(bad), f"'{field}'")


def test_decoder_with_non_finite_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from r2f.decoders import load_decoder

    good = make_decoder(tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    name = min(tensors)
    tensors[name][0] = float("nan")
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"r2f": json.dumps(_valid_meta())})
    with pytest.raises(R2FInputError, match="NaN/Inf"):
        load_decoder(bad)
    assert load_decoder(good).meta["probe"]["rank"] == 4


# ------------------------------------------------------------------------------------- 5. fuzzing


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                     max_leaves=12)
_fields = st.sampled_from(["question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer",
                           "author"])
_records = st.dictionaries(_fields, _json, max_size=6)


def _load_or_input_error(path: Path):
    from r2f.data import load_items
    from r2f.data.schema import QAItem

    try:
        items = load_items(path)
    except R2FInputError:
        return None
    assert items and all(isinstance(it, QAItem) for it in items)
    return items


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json"]))
def test_fuzz_loader_arbitrary_bytes(tmp_path, data, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    _load_or_input_error(path)


@FUZZ
@given(lines=st.lists(st.one_of(_records, _json).map(json.dumps) | st.text(max_size=40), max_size=5),
       suffix=st.sampled_from([".jsonl", ".json"]))
def test_fuzz_loader_arbitrary_json_lines(tmp_path, lines, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8")
    _load_or_input_error(path)


_visible = st.text(min_size=1, max_size=30).filter(lambda s: __import__("r2f.data.schema", fromlist=["x"]).visible(s))
_valid = st.fixed_dictionaries(
    {"question": _visible, "answer": _visible},
    optional={"paraphrased_question": st.lists(st.text(max_size=20), max_size=3),
              "paraphrased_answer": st.text(max_size=20), "perturbed_answer": st.lists(st.text(max_size=20), max_size=3),
              "author": st.text(max_size=10)})


@FUZZ
@given(records=st.lists(_valid, min_size=1, max_size=5), ascii_only=st.booleans(), as_json=st.booleans())
def test_fuzz_valid_records_round_trip(tmp_path, records, ascii_only, as_json):
    from r2f.data import load_items
    from r2f.data.loader import item_locations
    from r2f.data.schema import QAItem

    path = tmp_path / ("f.json" if as_json else "f.jsonl")
    if as_json:
        path.write_text(json.dumps(records, ensure_ascii=ascii_only), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records), encoding="utf-8")
    items = load_items(path)
    assert items == [QAItem.model_validate(r) for r in records]
    assert len(item_locations(path)) == len(items)
    again = tmp_path / "again.jsonl"
    again.write_text("".join(it.model_dump_json() + "\n" for it in items), encoding="utf-8")
    assert load_items(again) == items


@FUZZ
@given(raw=st.one_of(st.text(max_size=200), _json.map(json.dumps),
                     st.builds(lambda m, k, v: json.dumps({**_valid_meta(), k: v} if k != "probe"
                                                          else {**_valid_meta(), "probe": v}),
                               st.just(0), st.sampled_from(["hidden", "bases", "n_features", "probe", "module_kinds",
                                                            "format_version", "decoder"]), _json)))
def test_fuzz_decoder_metadata_parser(raw):
    from r2f.decoders.learned import parse_decoder_meta

    try:
        meta = parse_decoder_meta(raw, source="d.safetensors")
    except R2FInputError as exc:
        assert str(exc).startswith("d.safetensors: ")
        return
    assert isinstance(meta, dict) and meta["probe"]["rank"] >= 1


def test_decoder_metadata_round_trip(tmp_path):
    from r2f.decoders.learned import parse_decoder_meta

    meta = _valid_meta()
    assert parse_decoder_meta(json.dumps(meta)) == meta
    dec = make_decoder(tmp_path / "d.safetensors")
    from r2f.decoders import load_decoder

    assert load_decoder(dec).meta["probe"] == _valid_meta()["probe"]


# ------------------------------------------------------------------ 6. source models byte-identical


def test_source_model_byte_identical_after_success_and_failure(capsys, tmp_path, src, forget):
    before = tree_digest(src)
    code, lines = cli(capsys, *unlearn_args(src, forget, tmp_path / "ok"), "--save-every", "1")
    assert code == 0, lines
    assert tree_digest(src) == before
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{nope"])
    code, _ = cli(capsys, *unlearn_args(src, bad, tmp_path / "bad"))
    assert code == 2 and tree_digest(src) == before
    code, _ = cli(capsys, *unlearn_args(src, forget, src), "--overwrite")
    assert code == 2 and tree_digest(src) == before


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the results must still honour the umask like open()."""
    import stat

    from r2f.io import atomic_dir, write_text_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    f = write_text_atomic(tmp_path / "report.md", "x")
    with atomic_dir(tmp_path / "model") as d:
        (d / "config.json").write_text("{}")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "model").st_mode) == 0o777 & ~mask


@pytest.fixture(params=[0o027, 0o002], ids=["umask027", "umask002"])
def umask(request):
    """A umask set by the test (not the import-time one), restored afterwards."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_a_saved_decoder_gets_the_permissions_of_a_plain_write_under_the_umask(tmp_path, umask):
    """safetensors' save_file re-creates its file 0600: a decoder and its sidecar must still follow the umask."""
    import stat

    from r2f.decoders.learned import CoefNet, LearnedDecoder

    path = LearnedDecoder(CoefNet(), {"access": "batch"}).save(tmp_path / "dec.safetensors")
    for f in (path, tmp_path / "dec.safetensors.json"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~umask, f


def test_an_atomic_directory_of_safetensors_gets_the_permissions_of_a_plain_write(tmp_path, umask):
    """Models and checkpoints are written through safetensors inside atomic_dir; none may stay 0600/0700."""
    import stat

    import torch
    from safetensors.torch import save_file

    from r2f.io import atomic_dir

    with atomic_dir(tmp_path / "model") as d:
        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
        (d / "checkpoints" / "step-1").mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(d / "checkpoints" / "step-1" / "state.safetensors"))
    out = tmp_path / "model"
    for f in (out / "model.safetensors", out / "checkpoints" / "step-1" / "state.safetensors"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~umask, f
    for d in (out, out / "checkpoints", out / "checkpoints" / "step-1"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o777 & ~umask, d


def test_quiet_by_default_and_verbose_brings_the_noise_back(tmp_path, src, forget):
    """Third-party bars and deprecation warnings carry no information for a user: off unless --verbose."""
    env = {k: v for k, v in os.environ.items()  # (in-process CLI tests may have set the quiet variables)
           if k not in ("R2F_NO_PROGRESS", "R2F_VERBOSE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "r2f", "unlearn", "--model", str(src), "--forget", str(forget), "--method", "lora",
            "--steps", "1"]
    quiet = subprocess.run([*args, "--out", str(tmp_path / "q")], capture_output=True, text=True, env=env)
    loud = subprocess.run([*args, "--out", str(tmp_path / "v"), "--verbose"], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    for noise in ("Loading weights", "Writing model shards", "FutureWarning"):
        assert noise not in quiet.stderr, noise
    assert "Loading weights" in loud.stderr and "FutureWarning" in loud.stderr


def test_peak_memory_measurement_writes_nothing_to_stderr(capfd):
    """torch's profiler prints USDT start/stop lines straight to fd 2; r2f's CPU peak-memory probe hides them."""
    from r2f.decoders.fidelity import PeakMemory

    with PeakMemory(torch.device("cpu")) as peak:
        torch.zeros(256, 256)
    assert peak.peak_mb > 0
    assert "USDT" not in capfd.readouterr().err


def test_torch_cpp_warnings_are_quiet_unless_verbose(tmp_path):
    """The profiler's CPUAllocator warning (a block freed while CPU peak memory is measured) reached the demo's
    log; the CLI's quiet setup silences torch's C++ warnings, --verbose (R2F_VERBOSE=1) keeps them."""
    script = ("from r2f.quiet import silence_third_party\n"
              "silence_third_party()\n"
              "import torch\n"
              "from torch.profiler import ProfilerActivity, profile\n"
              "x = torch.ones(512, 512)\n"
              "with profile(activities=[ProfilerActivity.CPU], profile_memory=True):\n"
              "    del x\n")
    env = {k: v for k, v in os.environ.items() if k not in ("R2F_VERBOSE", "TORCH_CPP_LOG_LEVEL")}
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**env, "R2F_VERBOSE": "1"})
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "CPUAllocator" in loud.stderr
    assert "CPUAllocator" not in quiet.stderr, quiet.stderr


def test_progress_in_a_log_prints_a_few_lines_with_real_progress(capsys, monkeypatch):
    """Not a terminal: one line per quarter with counts (a redrawn bar only ever showed 0 % in logs)."""
    from r2f.progress import progress

    monkeypatch.delenv("R2F_NO_PROGRESS", raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert sum(1 for _ in progress(range(10), desc="scoring")) == 10
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines[-1].startswith("scoring: 10/10 (100 %)") and 2 <= len(lines) <= 5
    assert "\r" not in "".join(lines)


@pytest.mark.parametrize("pip_rc", [0, 1])
def test_setup_fails_when_a_pip_install_fails(tmp_path, pip_rc):
    """scripts/setup.sh must not hide a failing pip behind its output filter (and must pass when pip passes)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"  # stands in for the venv's python: `-m pip ...` exits pip_rc, the rest 0
    fake.write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m pip" ]; then echo "pip says no" >&2; exit {pip_rc}; fi\nexit 0\n')
    fake.chmod(0o755)
    setup = Path(__file__).resolve().parent.parent / "scripts" / "setup.sh"
    run = subprocess.run(["bash", str(setup)], env={**os.environ, "R2F_VENV": str(venv)}, capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode != 0) == bool(pip_rc), run.stderr
