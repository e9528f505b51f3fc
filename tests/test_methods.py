"""Unlearning methods: losses against hand-computed values, every method end to end, errors, r2f's rule."""

from __future__ import annotations

import hashlib
import json
import inspect
import math
from pathlib import Path

import pytest
import torch

from r2f.errors import R2FInputError

from r2f.methods import METHODS as _REGISTRY

#: every registered method (a new method file is run end to end below without editing this file)
METHODS = list(_REGISTRY)
#: options the tiny random model needs: R2F's rules off (see below); RMU's layer 7 does not exist in 2 layers
TINY_OPTIONS = {"r2f": {"stop": "none", "step_rule": "schedule"}, "exact": {"stop": "none", "step_rule": "schedule"},
                "rmu": {"module_regex": r"model\.layers\.1"}}


# ------------------------------------------------------------------------------------ fixtures


def recording_decoder():
    """A stand-in decoder handed to R2F as its ``decoder`` option (injected, no monkeypatching): the least-squares
    closed form, recording every call it gets. Its methods override :class:`r2f.decoders.Decoder`'s with the same
    signatures (``test_an_injected_decoder_is_the_one_r2f_uses`` checks them)."""
    from r2f.decoders import Decoder, LSDecoder

    class RecordingLS(Decoder):
        name = "recording-ls"

        def __init__(self, dtype=torch.float32):
            super().__init__(dtype)
            self.real = LSDecoder(dtype)
            self.calls: list[str] = []

        def check_compatible(self, probe, kinds=None):
            self.calls.append("check_compatible")

        def decode(self, sk, stats=None):
            return self.real.decode(sk, stats)

        def decode_many(self, sketches, stats=None):
            self.calls.append("decode_many")
            for sk in sketches:
                yield sk, self.decode(sk, stats)

    return RecordingLS()


def _records(n, prefix):
    out = []
    for i in range(n):
        out.append({"question": f"What is the favourite colour of {prefix} {i}?",
                    "answer": f"The favourite colour of {prefix} {i} is shade {i * 7 % 13}.",
                    "paraphrased_question": [f"Which colour does {prefix} {i} like best?",
                                             f"Name the colour {prefix} {i} prefers."],
                    "perturbed_answer": [f"It is shade {(i + 3) % 13}.", f"It is shade {(i + 5) % 13}."]})
    return out


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A random-init tiny Llama with its own BPE tokenizer, saved as a HF directory, plus data files."""
    from r2f.models.ladder import build_model
    from r2f.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("methods")
    forget, retain = _records(6, "author"), _records(10, "writer")
    texts = [r[k] for r in forget + retain for k in ("question", "answer")]
    texts += [q for r in forget + retain for q in r["paraphrased_question"] + r["perturbed_answer"]]
    tok = train_tokenizer(texts, vocab_size=300)
    model = build_model("tiny", tok, seed=0)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for name, recs in (("forget", forget), ("retain", retain)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "empty.jsonl").write_text("")
    return {"root": root, "model": model_dir, "forget": root / "forget.jsonl", "retain": root / "retain.jsonl",
            "empty": root / "empty.jsonl"}


def dir_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ losses


def test_npo_loss_hand_computed():
    from r2f.methods.losses import npo_loss

    theta, ref, beta = torch.tensor([2.0, 5.0]), torch.tensor([3.0, 1.0]), 0.1
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    expected = -(2 / beta) * (logsig(beta * (2.0 - 3.0)) + logsig(beta * (5.0 - 1.0))) / 2
    assert float(npo_loss(theta, ref, beta)) == pytest.approx(expected, rel=1e-6)
    # At the reference the loss is (2/β)·log 2, and raising NLL_θ lowers it (it pushes forgetting).
    assert float(npo_loss(ref, ref, beta)) == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    x = theta.clone().requires_grad_(True)
    npo_loss(x, ref, beta).backward()
    assert (x.grad < 0).all()


def test_simnpo_loss_hand_computed():
    from r2f.methods.losses import simnpo_loss

    sums, lens, beta, delta = torch.tensor([4.0, 9.0]), torch.tensor([2, 3]), 4.5, 0.5
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    expected = -(2 / beta) * (logsig(beta * (2.0 - delta)) + logsig(beta * (3.0 - delta))) / 2
    assert float(simnpo_loss(sums, lens, beta, delta)) == pytest.approx(expected, rel=1e-6)


def test_sequence_nll_matches_answer_token_nll(tiny_setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.data.templates import answer_token_nll, encode_qa
    from r2f.methods.losses import sequence_nll, token_mean_nll

    model = AutoModelForCausalLM.from_pretrained(tiny_setup["model"])
    tok = AutoTokenizer.from_pretrained(tiny_setup["model"])
    batch = encode_qa(tok, ["Who?", "What is it, really?"], ["Ada.", "A long answer here."])
    s, n = sequence_nll(model, batch)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(s / n, answer_token_nll(out.logits, batch["labels"]))
    torch.testing.assert_close(token_mean_nll(s, n), out.loss, rtol=1e-5, atol=1e-6)  # HF's outputs.loss


def _concrete_methods(cls) -> set:
    """Every subclass of ``cls`` (recursively) in the r2f package that names itself: a method the engine could run
    (classes tests define for themselves, e.g. test_reliability's NaN methods, are not the package's)."""
    out = set()
    for sub in cls.__subclasses__():
        out |= ({sub} if sub.name and sub.__module__.startswith("r2f.") else set()) | _concrete_methods(sub)
    return out


def test_method_registry_and_defaults():
    """The registry holds every named method class under its own name (none forgotten, none mis-keyed), with
    OpenUnlearning's defaults (values from its configs, not read back from our classes)."""
    from r2f.methods import METHODS, get_method
    from r2f.methods.engine import Method

    assert {"r2f", "grad_ascent", "grad_diff", "npo", "simnpo", "lora", "exact"} <= set(METHODS)
    assert {cls.name for cls in _concrete_methods(Method)} == set(METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name
        method = get_method(name)
        assert type(method) is cls and method.options == {k: v for k, v in cls.defaults.items()}
    assert get_method("grad_diff").options["gamma"] == 1.0 and get_method("grad_diff").options["alpha"] == 1.0
    assert get_method("npo").options["beta"] == 0.1
    s = get_method("simnpo").options
    assert (s["beta"], s["delta"], s["gamma"], s["alpha"]) == (4.5, 0.0, 0.125, 1.0)
    assert get_method("grad_ascent").options["alpha"] == 0.0
    with pytest.raises(R2FInputError):
        get_method("grad_ascent", bogus=1)
    with pytest.raises(R2FInputError) as exc:
        get_method("nope")
    assert all(name in str(exc.value) for name in METHODS)  # the refusal lists the registry


def test_what_a_method_declares_decides_not_its_name(tiny_setup, tmp_path, monkeypatch):
    """A method the registry gains at run time is treated by its class's capabilities: retain data made from the
    target when it needs some and got no file, --decoder refused (naming the registry's decoder methods, read from the classes) until it declares
    ``uses_decoder``, then its decoder is loaded before the model; an optimizer the engine does not run is refused
    at registration."""
    from dataclasses import dataclass

    from r2f.methods import METHODS, register, unlearn
    from r2f.methods.base import methods_that
    from r2f.methods.baselines import GradAscent, GradAscentConfig
    from r2f.methods.config import option

    @dataclass(frozen=True)
    class DeclaredConfig(GradAscentConfig):
        decoder: str | None = option(None, "the decoder (a name or a file)")

    class Declared(GradAscent):
        name = "declared_for_test"
        needs_retain = True

    monkeypatch.setitem(METHODS, Declared.name, Declared)
    args = (str(tiny_setup["model"]), tiny_setup["forget"])
    # no retain file: a method that needs retain data makes its own from the target, and the manifest says so
    # (these forget questions name no subject, so the generic questions: r2f.methods.guard.self_made_retain)
    made = json.loads((unlearn(*args, None, method=Declared.name, out=tmp_path / "a", steps=1)
                       / "manifest.json").read_text())["data"]["retain"]
    assert made["source"] == "generated" and made["path"] is None and made["items"] > 0
    with pytest.raises(R2FInputError) as exc:
        unlearn(*args, tiny_setup["retain"], method=Declared.name, decoder="exact", out=tmp_path / "b", steps=1)
    users = [n for n, cls in METHODS.items() if cls.uses_decoder]
    assert users == methods_that("uses_decoder") and {"r2f", "exact"} <= set(users)
    assert exc.value.source == "--decoder" and all(n in str(exc.value) for n in users)
    assert str(exc.value).count(Declared.name) == 1  # named as the method given, not among the decoder methods
    monkeypatch.setattr(Declared, "uses_decoder", True)
    monkeypatch.setattr(Declared, "config_class", DeclaredConfig)  # a decoder method has a decoder option
    monkeypatch.setattr(Declared, "defaults", DeclaredConfig.defaults())
    with pytest.raises(R2FInputError, match="unknown decoder"):  # now loaded, and refused, before the model
        unlearn(*args, tiny_setup["retain"], method=Declared.name, decoder="no-such-decoder", out=tmp_path / "c",
                steps=1)
    assert not any((tmp_path / d).exists() for d in "bc")  # refused runs write nothing ("a" ran)

    class Unrunnable(GradAscent):
        name = "unrunnable_for_test"
        optimizer = "sgd"

    with pytest.raises(ValueError, match="sgd"):
        register(Unrunnable)
    assert Unrunnable.name not in METHODS


def test_typed_options_are_validated_where_the_method_is_made(capsys):
    """A method's Config is its options: defaults read from it, a value outside a Literal, of the wrong type or an
    unknown name refused at construction (naming the option; the unknown one with every valid option and its
    default), and `r2f methods` prints the same types, defaults and help."""
    import dataclasses

    from r2f.cli import main
    from r2f.methods import METHODS, get_method

    typed = {n: cls for n, cls in METHODS.items() if cls.config_class is not None}
    assert set(typed) == set(METHODS)  # every method, R2F and exact included
    for name, cls in typed.items():
        assert cls.defaults == {f.name: f.default for f in dataclasses.fields(cls.config_class)}
        made = get_method(name)
        assert made.config.to_dict() == made.options
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.config.gamma = 0.5
    for options, source, words in (({"objective": "dpo"}, "objective", ["choose from ga, npo, simnpo"]),
                                   ({"rank": "eight"}, "rank", ["expected int", "'eight'"]),
                                   ({"views": True}, "views", ["expected int"]),
                                   ({"bogus": 1}, "--method", ["bogus", "rank (8)", "objective ('ga')"])):
        with pytest.raises(R2FInputError) as exc:
            get_method("lora", **options)
        assert exc.value.source == source and all(w in str(exc.value) for w in words), str(exc.value)
    assert get_method("npo", gamma=1).options["gamma"] == 1  # an int for a float: valid, kept as given
    with pytest.raises(SystemExit) as code:
        main(["methods", "lora"])
    assert code.value.code in (0, None)
    out = capsys.readouterr().out
    assert "optimizer adamw" in out and "-o rank=8: int  LoRA rank r" in out
    assert "-o objective=\"ga\": 'ga' | 'npo' | 'simnpo'" in out
    with pytest.raises(SystemExit) as code:
        main(["methods", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == list(METHODS)
    assert next(d for d in listed if d["name"] == "r2f")["uses_decoder"] is True
    with pytest.raises(SystemExit) as code:
        main(["methods", "nope"])
    assert code.value.code == 2 and "choose from" in capsys.readouterr().err


#: R2F's options and defaults, written out here so that a changed default or a reordered option fails a test (the
#: run key and the manifest record them in this order). As before R2FConfig, except the seventh round's defaults
#: (docs/methods.md): precondition auto (keep-whitening unless access mode lora), guard_items 64, the new
#: sigma_damp and keep_text; the tenth round's answer_tokens (fact) with its format_share; and the eleventh round's
#: guard_measure (nll, the former behaviour) and retain_data choice renamed (what auto picks without a retain file);
#: the twelfth round's document_tokens (all: the loss on documents as before); the thirteenth round's past_threshold
#: (while_clean: past the stop threshold while the collateral watch has not moved); the fourteenth round's fallback
#: (balanced: a run that would halt for want of a step goes on with balanced views once); the fifteenth round's
#: guard_budget (None: 0.08 on QA, 0.04 on documents).
R2F_DEFAULTS = {
    "decoder": None, "access": None, "objective": "npo", "beta": None, "steer_layer": None, "steer_scale": 1.0,
    "views": 4, "answer_tokens": "fact", "format_share": 0.1, "document_tokens": "all", "rank": None, "rank_a": None, "probe_seed": 0, "target_modules": None, "aggregate": "mean",
    "guard": "project", "retain_data": "auto", "retain_weight": 3.0, "retain_loss": "nll", "step_rule": "search", "guard_measure": "nll", "guard_tol": 0.02,
    "guard_budget": None, "backtracks": 4, "patience": None, "fallback": "balanced", "guard_items": 512, "retain_views": 1, "step_norm": "global",
    "precondition": "auto", "min_step_ratio": 0.1, "stop": "shuffled", "stop_nll": None, "stop_window": 1,
    "past_threshold": "while_clean", "stats": "retain", "stats_items": 64, "forgotten": None, "hold": "earlier", "sigma_damp": 0.05,
    "keep_text": "guard+generated",
}


def test_r2f_options_are_its_frozen_config(capsys):
    """R2F's (and exact's) options come from R2FConfig: the defaults written out above, in order, each choice
    option a Literal validated where the method is made (an unknown value is an input error naming the option and
    its choices; a non-positive guard_tol or guard_budget too), an unknown option listed against R2F's own, and
    `r2f methods --json` prints the choices."""
    from r2f.cli import main
    from r2f.decoders.learned import ACCESS_MODES
    from r2f.methods import METHODS, get_method
    from r2f.methods.r2f import ExactConfig, R2FConfig

    assert list(METHODS["r2f"].defaults.items()) == list(R2F_DEFAULTS.items())
    assert METHODS["exact"].defaults == {**R2F_DEFAULTS, "decoder": "exact"}
    assert list(METHODS["exact"].defaults) == list(R2F_DEFAULTS)
    assert get_method("exact").config == ExactConfig() and get_method("r2f").config == R2FConfig()
    choices = {d["name"]: d["choices"] for d in R2FConfig.describe()}
    assert choices["access"] == (*ACCESS_MODES, None)  # the decoders' access modes, and None: the decoder's own
    for options, source, words in (
            ({"stop": "never"}, "stop", ["unknown stop 'never'", "choose from shuffled, perturbed, none"]),
            ({"precondition": "sgd"}, "precondition", ["choose from auto, sigma, adam, none"]),
            ({"objective": "dpo"}, "objective", ["choose from ga, npo, wga, rmu"]),
            ({"access": "full"}, "access", ["lora, stats, batch"]),
            ({"guard_tol": 0}, "guard_tol", ["must be positive"]),
            ({"guard_budget": -0.1}, "guard_budget", ["must be positive"]),
            ({"patience": 0}, "patience", ["must be at least 1"]),
            ({"format_share": 0}, "format_share", ["must be in (0, 1]"]),
            ({"answer_tokens": "some"}, "answer_tokens", ["choose from fact, all"]),
            ({"views": 2.5}, "views", ["expected int"]),
            ({"stop_nll": "low"}, "stop_nll", ["expected float | None"]),
            ({"bogus": 1}, "--method", ["bogus", "method 'r2f'", "guard_tol (0.02)", "stop ('shuffled')",
                                        "stats_items (64)"])):
        with pytest.raises(R2FInputError) as exc:
            get_method("r2f", **options)
        assert exc.value.source == source and all(w in str(exc.value) for w in words), str(exc.value)
    with pytest.raises(R2FInputError) as exc:
        get_method("exact", stop="never")
    assert exc.value.source == "stop"
    with pytest.raises(R2FInputError, match="exact decoder"):
        get_method("exact", decoder="sketch")
    made = get_method("r2f", stop="perturbed", guard_tol=1, decoder="sketch")
    assert (made.config.stop, made.config.guard_tol, made.config.decoder) == ("perturbed", 1, "sketch")
    assert made.options["stop"] == "perturbed" and not hasattr(made, "stop")  # read typed, not as loose attributes
    with pytest.raises(SystemExit):
        main(["methods", "--json"])
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    r2f_options = {o["name"]: o for o in listed["r2f"]["options"]}
    assert list(r2f_options) == list(R2F_DEFAULTS)
    assert r2f_options["stop"]["choices"] == ["shuffled", "perturbed", "none"]
    assert r2f_options["precondition"]["choices"] == ["auto", "sigma", "adam", "none"] and r2f_options["guard_tol"]["choices"] is None
    assert r2f_options["retain_weight"]["help"].startswith("λ of the added retain-descent term")
    assert next(o for o in listed["exact"]["options"] if o["name"] == "decoder")["default"] == "exact"


def test_the_run_spec_is_the_record_of_a_run(tiny_setup, tmp_path):
    """The manifest's config and run key are the frozen, validated RunSpec unlearn built, and a spec differing in
    one field names that field when --resume meets the run."""
    import dataclasses

    from r2f.methods import unlearn
    from r2f.methods.api import RunSpec

    out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="npo",
                  out=tmp_path / "a", steps=2, batch_size=3, save_every=1, gamma=0.5)
    man = json.loads((out / "manifest.json").read_text())
    spec = RunSpec(method="npo", options=man["config"]["options"], steps=2, lr=1e-3, batch_size=3, seed=0,
                   max_length=512, optimizer=man["config"]["optimizer"])
    assert spec.config() == man["config"] and man["config"]["options"]["gamma"] == 0.5
    assert spec.run_key(man["data"]["forget"]["sha256"], man["data"]["retain"]["sha256"],
                        man["source_model"]["fingerprint"]) == man["run_key"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 3
    # validated whenever one is made, not only where unlearn checks its arguments
    for field, value in (("steps", 0), ("lr", 0.0), ("lr", float("nan")), ("batch_size", 0), ("save_every", -1),
                         ("max_failures", 0)):
        with pytest.raises(R2FInputError) as exc:
            dataclasses.replace(spec, **{field: value})
        assert exc.value.source == "--" + field.replace("_", "-"), (field, value)
    with pytest.raises(R2FInputError, match="batch_size"):
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="npo", out=out,
                steps=2, batch_size=2, save_every=1, gamma=0.5, resume=True)


def test_docs_describe_every_registered_method():
    """docs/methods.md has a section heading, a table row or a bold paragraph for every name the registry holds."""
    import re

    from r2f.methods import METHODS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
    for name in METHODS:
        assert re.search(rf"^(## `{name}`|\| `{name}` \||\*\*`{name}`\*\*)", doc, re.M), name


def test_the_run_encoder_gives_encode_qa_batches_tokenising_each_text_once(tiny_setup):
    """QAEncoder (the engine's, shared by every batch of a run) returns encode_qa's tensors, truncation included,
    and asks the tokenizer once per distinct prompt and answer however often the texts come back."""
    from transformers import AutoTokenizer

    from r2f.data.batching import QAEncoder
    from r2f.data.loader import load_items
    from r2f.data.templates import encode_qa, template_for

    tok = AutoTokenizer.from_pretrained(tiny_setup["model"])
    items = load_items(tiny_setup["forget"])
    qs, ans = [it.question for it in items] * 2, [it.answer for it in items] * 2
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, text, **kw):
            calls.append(text)
            return tok(text, **kw)

    for max_length in (None, 12):
        encode = QAEncoder(Counting(), template_for(tok), max_length)
        calls.clear()
        for _ in range(3):
            got = encode(qs, ans)
            want = encode_qa(tok, qs, ans, template_for(tok), max_length)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert len(calls) == len(set(qs)) + len(set(ans))


def test_batches_are_a_function_of_seed_and_step():
    from r2f.methods.engine import batch_indices

    a = [batch_indices(10, 4, 3, 0, s) for s in range(9)]
    assert a == [batch_indices(10, 4, 3, 0, s) for s in range(9)]
    assert a != [batch_indices(10, 4, 4, 0, s) for s in range(9)]
    assert sorted(sum(a[:3], [])[:10]) == list(range(10))  # an epoch covers every item
    assert all(len(b) == 4 and len(set(b)) == 4 for b in a)


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_output_loads(method, tiny_setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.methods import unlearn

    before = dir_digest(tiny_setup["model"])
    # R2F's stop rules are off: this random model already scores its forget answers like wrong answers, and
    # its line search may find no step within the guard; the fixed schedule runs every step (machinery test).
    extra = TINY_OPTIONS.get(method, {})
    out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method=method,
                  decoder="exact" if method == "r2f" else None, out=tmp_path / "out", steps=3, batch_size=3, seed=1,
                  **extra)
    assert dir_digest(tiny_setup["model"]) == before  # the source model is never modified
    model = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert not any(n for n, _ in model.named_parameters() if "lora" in n)
    man = json.loads((out / "manifest.json").read_text())
    assert man["method"] == method and man["steps"]["done"] == 3 and len(man["log"]) == 3
    assert man["data"]["forget"]["sha256"] == hashlib.sha256(tiny_setup["forget"].read_bytes()).hexdigest()
    assert man["source_model"]["fingerprint"]
    for entry in man["log"]:
        assert {"forget_nll", "retain_nll"} <= set(entry) and ("lr" in entry or "step_size" in entry)
    assert man["cost"]["wall_s"] > 0 and man["cost"]["peak_mem_mb"] > 0
    assert {"load", "setup", "unlearn", "finalize"} <= set(man["cost"]["stages"])
    assert not list(out.parent.glob(".out.*"))  # no temporary leftovers
    # which weights changed: AdamW methods every parameter (weight decay moves even the embedding rows no batch
    # uses), the LoRA rows exactly the adapted Linear layers (merged), R2F exactly its probed Linear layers
    from r2f.gradients.probe import target_linears

    src = AutoModelForCausalLM.from_pretrained(tiny_setup["model"])
    params = dict(src.named_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, params[n])}
    linears = {f"{n}.weight" for n, _ in target_linears(src)}
    # RMU's loss is read at the last layer here: the final norm gets no gradient (and, 1-D, no weight decay)
    expected = {"lora": linears, "r2f": linears, "exact": linears,
                "rmu": set(params) - {"model.norm.weight"}}.get(method, set(params))
    assert changed == expected


def _hand_nll(model, tok, path) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: summed answer-token NLL and answer length, from the logits (independent of r2f's losses)."""
    from r2f.data.templates import encode_qa, template_for

    recs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    enc = encode_qa(tok, [r["question"] for r in recs], [r["answer"] for r in recs], template_for(tok), 512)
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
    labels = enc["labels"][:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(logp * mask).sum(1), mask.sum(1)


@pytest.mark.parametrize("method", ["grad_ascent", "grad_diff", "npo", "simnpo"])
def test_one_step_moves_every_weight_by_a_hand_computed_adamw_step(method, tiny_setup, tmp_path):
    """One engine step equals the loss written out here, back-propagated, clipped at norm 1 and put through
    AdamW's first step by hand: w ← w(1 − lr·wd) − lr·g/(|g| + ε), wd = 0.01 on matrices only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.methods import unlearn

    lr = 1e-3
    # a batch larger than either file: step 0 sees every forget and every retain item
    out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method=method,
                  out=tmp_path / "o", steps=1, batch_size=16, lr=lr, seed=0)
    got = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    model = AutoModelForCausalLM.from_pretrained(tiny_setup["model"])
    model.train()
    tok = AutoTokenizer.from_pretrained(tiny_setup["model"])
    s, n = _hand_nll(model, tok, tiny_setup["forget"])
    rs, rn = _hand_nll(model, tok, tiny_setup["retain"])
    logsig = torch.nn.functional.logsigmoid
    forget_loss = {  # OpenUnlearning's forget losses; NPO's reference is the initial model, i.e. s itself now
        "grad_ascent": lambda: -s.sum() / n.sum(),
        "grad_diff": lambda: -s.sum() / n.sum(),
        "npo": lambda: -(2 / 0.1) * logsig(0.1 * (s - s.detach())).mean(),
        "simnpo": lambda: 0.125 * -(2 / 4.5) * logsig(4.5 * (s / n)).mean(),
    }[method]()
    loss = forget_loss + (0.0 if method == "grad_ascent" else rs.sum() / rn.sum())
    names = [k for k, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    clip = min(1.0, 1.0 / (float(total) + 1e-6))
    for name, p, g in zip(names, model.parameters(), grads):
        g = g * clip
        wd = 0.01 if p.ndim >= 2 else 0.0
        want = p.detach() * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
        # 1 % of lr (weight decay's own 1e-5 relative change is below it; test_every_method_runs_and_output_loads
        # sees every weight move). Where |g| is within 100·ε of zero, g/(|g| + ε) turns on the gradient's last bits,
        # which move with the CPU's summation order (one weight in 8192 by 1.5 % of lr on an Intel Xeon): there
        # the step is only bounded by lr.
        tol = torch.where(g.abs() < 1e-6, torch.full_like(g, 1.01 * lr), torch.full_like(g, 1e-5))
        off = (got[name].detach() - want).abs() > tol
        assert not off.any(), f"{method}: {name}: {int(off.sum())} weights off, worst {(got[name] - want).abs().max()}"


def test_grad_ascent_raises_forget_nll(tiny_setup, tmp_path):
    from r2f.methods import unlearn

    out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, method="grad_ascent", out=tmp_path / "o",
                  steps=6, batch_size=6, lr=1e-3)
    s = json.loads((out / "manifest.json").read_text())["summary"]
    assert s["forget_nll_end"] > s["forget_nll_start"] + 0.05


@pytest.mark.parametrize("method", ["grad_diff", "npo", "lora", "r2f", "rmu"])
def test_resume_is_bit_identical(method, tiny_setup, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from r2f.methods import METHODS, unlearn

    kw = dict(method=method, steps=6, batch_size=3, seed=7, save_every=2)
    if method == "r2f":  # the default rule (line search, Adam moments) with a guard wide enough for every step
        # (on this random model retain and forget text are alike: no retain descent, or forgetting stalls)
        kw.update(decoder="exact", stop="none", guard_tol=10.0, guard_budget=10.0, retain_weight=0.0)
    if method == "rmu":  # the frozen model and the control vector must come back the same on resume
        kw.update(TINY_OPTIONS["rmu"])
    full = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], out=tmp_path / "a", **kw)

    cls = METHODS[method]
    hook = "update" if hasattr(cls, "update") else "loss"
    original = getattr(cls, hook)

    def crash(self, model, forget, retain, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, model, forget, retain, ctx)

    monkeypatch.setattr(cls, hook, crash)
    with pytest.raises(KeyboardInterrupt):
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], out=tmp_path / "b", **kw)
    assert (tmp_path / "b" / "checkpoints" / "step-00000002").is_dir()
    assert not (tmp_path / "b" / "model.safetensors").exists()
    monkeypatch.setattr(cls, hook, original)
    resumed = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], out=tmp_path / "b",
                      resume=True, **kw)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    man = json.loads((resumed / "manifest.json").read_text())
    assert man["resumed_from_step"] == 2 and len(man["log"]) == 6
    assert man["cost"]["total_wall_s"] >= man["cost"]["wall_s"] and "before_resume" in man["cost"]
    ref = json.loads((full / "manifest.json").read_text())
    assert [e["forget_nll"] for e in man["log"]] == [e["forget_nll"] for e in ref["log"]]
    # no pickle anywhere in checkpoints
    assert all(p.suffix in (".safetensors", ".json") for p in (resumed / "checkpoints").rglob("*") if p.is_file())


def test_resume_with_other_config_is_refused(tiny_setup, tmp_path):
    from r2f.methods import unlearn

    unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, method="grad_ascent", out=tmp_path / "a",
            steps=2, batch_size=3, save_every=1)
    with pytest.raises(R2FInputError, match="seed"):
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, method="grad_ascent", out=tmp_path / "a",
                steps=2, batch_size=3, save_every=1, seed=5, resume=True)


# ------------------------------------------------------------------------------------ errors


def _cli(argv):
    from r2f.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.mark.parametrize("case", ["method", "decoder", "empty", "same_dir", "nonempty", "option", "retain"])
def test_bad_input_exits_2_before_work(case, tiny_setup, tmp_path, capsys):
    m, f, r = str(tiny_setup["model"]), str(tiny_setup["forget"]), str(tiny_setup["retain"])
    out = tmp_path / "out"
    argv = ["unlearn", "--model", m, "--forget", f, "--retain", r, "--out", str(out), "--steps", "1"]
    if case == "method":
        argv += ["--method", "bogus"]
    elif case == "decoder":
        argv += ["--method", "r2f", "--decoder", "no-such-decoder"]
    elif case == "empty":
        argv[argv.index(f)] = str(tiny_setup["empty"])
        argv += ["--method", "grad_ascent"]
    elif case == "same_dir":
        argv[argv.index(str(out))] = m
        argv += ["--method", "grad_ascent"]
    elif case == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        argv += ["--method", "grad_ascent"]
    elif case == "option":
        argv += ["--method", "npo", "-o", "bogus=1"]
    elif case == "retain":  # a retain file that is not there (no retain file at all is fine: made from the target)
        argv[argv.index(r)] = str(tmp_path / "missing.jsonl")
        argv += ["--method", "npo"]
    before = dir_digest(tiny_setup["model"])
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("r2f: error:")
    assert dir_digest(tiny_setup["model"]) == before
    if case == "nonempty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists() or case == "same_dir"


def test_cli_runs(tiny_setup, tmp_path, capsys):
    from r2f.cli import main

    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exc:
        main(["unlearn", "--model", str(tiny_setup["model"]), "--forget", str(tiny_setup["forget"]), "--retain",
              str(tiny_setup["retain"]), "--method", "simnpo", "--out", str(out), "--steps", "2", "--batch-size", "2",
              "-o", "gamma=0.5"])
    assert exc.value.code in (0, None)
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["options"]["gamma"] == 0.5 and man["config"]["batch_size"] == 2
    assert "simnpo: 2/2 steps" in capsys.readouterr().out


def test_r2f_refuses_a_decoder_whose_access_mode_the_run_does_not_allow(tiny_setup, tmp_path, capsys):
    """-o access=lora with a decoder that reads Σ: exit 2, one line naming both modes, nothing written; the
    manifest of an allowed run records the decoder's mode and its file's sha256."""
    import hashlib

    from r2f.cli import main
    from r2f.decoders.learned import BASES, N_FEATURES, CoefNet, J, LearnedDecoder
    from r2f.gradients import ProbeConfig

    meta = {"probe": ProbeConfig(rank=4).to_dict(), "bases": [b[0] for b in BASES], "n_features": N_FEATURES,
            "module_kinds": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "proxy": {"name": "random"}}
    files = {}
    for mode in ("stats", "lora"):
        files[mode] = LearnedDecoder(CoefNet(N_FEATURES, 4, J), {**meta, "access": mode}).save(tmp_path / f"{mode}.safetensors")
    args = ["unlearn", "--model", str(tiny_setup["model"]), "--forget", str(tiny_setup["forget"]), "--retain",
            str(tiny_setup["retain"]), "--method", "r2f", "--steps", "1", "--batch-size", "2", "-o", "access=lora",
            "-o", "rank=4"]
    out = tmp_path / "refused"
    with pytest.raises(SystemExit) as exc:
        main(args + ["--decoder", str(files["stats"]), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs access mode 'stats'" in err[0] and "allows 'lora'" in err[0]
    assert not out.exists() or not any(out.iterdir())
    ok = tmp_path / "allowed"
    loads, reads = [], []
    real_load = LearnedDecoder.load.__func__
    with pytest.MonkeyPatch.context() as mp:  # counted, not replaced: the run reads the file once
        mp.setattr(LearnedDecoder, "load", classmethod(lambda cls, path: loads.append(path) or real_load(cls, path)))
        _count_file_reads(mp, files["lora"], reads)
        with pytest.raises(SystemExit) as exc:
            main(args + ["--decoder", str(files["lora"]), "--out", str(ok)])
    # one open of the file: the weights, the metadata and the manifest's sha256 come from the same bytes
    assert exc.value.code in (0, None) and len(loads) == 1 and reads == ["open"]
    dec = json.loads((ok / "manifest.json").read_text())["method_info"]["decoder"]
    assert dec["access"] == "lora"
    assert dec["sha256"] == hashlib.sha256(files["lora"].read_bytes()).hexdigest()


def _count_file_reads(mp: pytest.MonkeyPatch, path: Path, reads: list[str]) -> None:
    """Record in ``reads`` every read of ``path``: Python's open and safetensors' own (Rust) file readers."""
    import builtins
    import io

    import safetensors
    import safetensors.torch

    def counted(name, real):
        def wrapper(file, *args, **kwargs):
            if str(file) == str(path):
                reads.append(name)
            return real(file, *args, **kwargs)
        return wrapper

    mp.setattr(io, "open", counted("open", io.open))
    mp.setattr(builtins, "open", counted("open", builtins.open))
    for module, name in ((safetensors, "safe_open"), (safetensors.torch, "safe_open"), (safetensors.torch, "load_file")):
        mp.setattr(module, name, counted(f"safetensors.{name}", getattr(module, name)))


def test_manifest_records_which_parameters_a_run_changed(tiny_setup, tmp_path):
    """Read from the weights, not declared: R2F changes only the probed Linear kinds; an AdamW baseline changes
    the embeddings, norms and head too. The report's "changes" column says so."""
    from r2f.methods import unlearn
    from r2f.report.build import changes_cell

    probed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    got = {}
    for method, opts in (("exact", {"stop": "none", "step_rule": "schedule"}), ("npo", {})):
        out = unlearn(tiny_setup["model"], tiny_setup["forget"], tiny_setup["retain"], method=method,
                      out=tmp_path / method, steps=2, batch_size=2, **opts)
        got[method] = json.loads((out / "manifest.json").read_text())["changed_parameters"]
    r2f, npo = got["exact"], got["npo"]
    assert r2f["tensors"] > 0 and set(r2f["kinds"]) <= probed
    assert {"embed_tokens", "norm"} <= set(r2f["unchanged_kinds"])
    assert r2f["params"] < npo["params"] <= npo["of_params"] == r2f["of_params"]
    assert "embed_tokens" in npo["kinds"]
    assert changes_cell(npo).startswith("all (") or "embed_tokens" in changes_cell(npo)
    assert changes_cell(r2f).startswith(", ".join(r2f["kinds"])) and "% of parameters" in changes_cell(r2f)


# ------------------------------------------------------------------------------------ r2f rule


def test_r2f_guard_projects_out_retain_conflict(tiny_setup):
    """One r2f step with the guard is first-order neutral on the retain loss; without it, it is not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.data.loader import load_items
    from r2f.distributed import ONE_PROCESS
    from r2f.methods import Engine, EngineConfig, get_method

    tok = AutoTokenizer.from_pretrained(tiny_setup["model"])
    forget, retain = load_items(tiny_setup["forget"]), load_items(tiny_setup["retain"])
    deltas = {}
    for guard in ("project", "none"):
        model = AutoModelForCausalLM.from_pretrained(tiny_setup["model"])
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        meth = get_method("r2f", decoder="exact", guard=guard, stop="none", retain_weight=0.0,
                          precondition="none", step_rule="schedule", step_norm="module")
        eng = Engine(model, tok, forget, retain, meth, EngineConfig(steps=1, lr=1e-3, batch_size=4), dp=ONE_PROCESS)
        eng.model = meth.setup(eng)
        fb, rb = eng.forget_batch(0), eng.retain_batch(0)
        g_r = meth.decoded(model, [rb.inputs], meth.retain_loss)
        from r2f.methods.engine import StepContext

        meth.update(model, fb, rb, StepContext(0, 1, 1e-3, 0, eng))
        deltas[guard] = {n: (p.detach() - before[n]) for n, p in model.named_parameters() if n in g_r}
        first_order = {n: float((g_r[n] * deltas[guard][n]).sum()) for n in g_r}
        if guard == "project":
            # ⟨∇L_r, ΔW⟩ <= 0 in every module: the step never raises the retain loss to first order
            assert all(v <= 1e-6 * float(g_r[n].norm() * deltas[guard][n].norm()) for n, v in first_order.items())
        else:
            assert any(v > 0 for v in first_order.values())  # plain ascent raises the retain loss somewhere
        # step size: ‖ΔW‖ = η‖W‖ per module (η_0 = lr at step 0)
        for n, d in deltas[guard].items():
            if float(d.norm()) > 0:
                assert float(d.norm()) == pytest.approx(1e-3 * float(before[n].norm()), rel=1e-3)


@pytest.mark.parametrize("decoder", ["sketch", "sigma", "lora"])
def test_r2f_with_real_builtin_decoders(decoder, tiny_setup, tmp_path):
    """r2f through the real r2f.decoders API (no stand-in)."""
    from r2f.methods import unlearn

    out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="r2f",
                  decoder=decoder, out=tmp_path / "o", steps=2, batch_size=3, stop="none", lr=0.01,
                  step_rule="schedule")
    man = json.loads((out / "manifest.json").read_text())
    assert man["decoder"] == decoder and man["steps"]["done"] == 2
    assert all(e["step_size"] > 0 for e in man["log"])


def test_an_injected_decoder_is_the_one_r2f_uses(tiny_setup, tmp_path):
    """A Decoder object given as ``decoder=`` is what R2F decodes with (two decodes per step: forget and retain
    directions), and the run equals one with the decoder of the same rule named ("ls"); the stand-in overrides
    the real interface with the real signatures."""
    from safetensors.torch import load_file

    from r2f.decoders import Decoder
    from r2f.methods import unlearn

    stand_in = recording_decoder()
    for hook in ("check_compatible", "decode", "decode_many"):
        params = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(Decoder, hook)).parameters.values()]
        assert params == [(p.name, p.kind, p.default)
                          for p in inspect.signature(getattr(type(stand_in), hook)).parameters.values()], hook
    kw = dict(method="r2f", steps=2, batch_size=3, stop="none", lr=0.01, step_rule="schedule")
    injected = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], decoder=stand_in,
                       out=tmp_path / "injected", **kw)
    named = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], decoder="ls",
                    out=tmp_path / "named", **kw)
    assert stand_in.calls.count("decode_many") == 4
    assert stand_in.calls.count("check_compatible") == 1  # once, at setup: no step checks the decoder again
    a, b = load_file(str(injected / "model.safetensors")), load_file(str(named / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((injected / "manifest.json").read_text())["method_info"]["decoder"]["name"] == "recording-ls"


def test_r2f_without_a_trained_decoder_is_refused(tiny_setup, tmp_path, monkeypatch):
    """R2F defaults to the last learned decoder on this machine; with none yet it says how to get one."""
    from r2f.methods import unlearn

    monkeypatch.setenv("R2F_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(R2FInputError, match="train-decoder"):
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="r2f",
                out=tmp_path / "o", steps=1)
    assert not (tmp_path / "o").exists()


def test_r2f_exact_forgets_and_guard_protects_retain(tiny_setup, tmp_path):
    """Exact-decoder r2f raises the forget NLL; the guard keeps the retain change below plain ascent's."""
    from r2f.methods import unlearn

    res = {}
    for tag, guard, lam in (("project", "project", 0.0), ("none", "none", 0.0), ("default", "project", 1.0)):
        out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="exact",
                      out=tmp_path / tag, steps=4, batch_size=6, lr=0.05, guard=guard, stop="none",
                      retain_weight=lam, precondition="none", step_rule="schedule", step_norm="module")
        res[tag] = json.loads((out / "manifest.json").read_text())["summary"]
    for tag in ("project", "none"):  # (on this random-init model forget and retain text are alike, so the
        s = res[tag]                 # default's retain descent also lowers the forget NLL; see integration)
        assert s["forget_nll_end"] > s["forget_nll_start"]
    d = {g: s["retain_nll_end"] - s["retain_nll_start"] for g, s in res.items()}
    assert abs(d["project"]) < abs(d["none"])
    assert d["default"] < d["project"]  # the retain-descent term lowers the retain NLL further


def test_resume_of_a_missing_run_is_refused(tiny_setup, tmp_path):
    """--resume on a directory that does not exist is bad input (it used to start a fresh run quietly)."""
    from r2f.methods import unlearn

    with pytest.raises(R2FInputError, match="--resume"):
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, method="grad_ascent", steps=1,
                out=tmp_path / "never-ran", resume=True)
    assert not (tmp_path / "never-ran").exists()


def test_resume_of_a_finished_run_returns_it_and_foreign_dir_is_refused(tiny_setup, tmp_path):
    from r2f.methods import unlearn

    kw = dict(method="grad_ascent", steps=2, batch_size=3, save_every=1)
    out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, out=tmp_path / "a", **kw)
    before = dir_digest(out)
    assert unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, out=out, resume=True, **kw) == out
    assert dir_digest(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    with pytest.raises(R2FInputError, match="resume"):
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, out=foreign, resume=True, **kw)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_in_memory_model_and_records_are_not_modified(tiny_setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.methods import unlearn

    model = AutoModelForCausalLM.from_pretrained(tiny_setup["model"])
    tok = AutoTokenizer.from_pretrained(tiny_setup["model"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = [json.loads(line) for line in tiny_setup["forget"].read_text().splitlines()]
    with pytest.raises(R2FInputError, match="tokenizer"):
        unlearn(model, records, None, method="grad_ascent", out=tmp_path / "x", steps=1)
    out = unlearn(model, records, None, method="grad_ascent", out=tmp_path / "o", steps=2, tokenizer=tok, lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    man = json.loads((out / "manifest.json").read_text())
    assert man["source_model"]["path"] is None and len(man["source_model"]["fingerprint"]) == 64
    assert man["data"]["forget"]["items"] == len(records)


def test_r2f_wga_objective_weights_tokens_by_their_probability(tiny_setup, tmp_path):
    """objective=wga decodes WGA's loss: the step follows −Σ p·∇NLL (tokens already unlikely push less), so it
    differs from plain ascent's step and still raises the forget NLL."""
    from safetensors.torch import load_file

    from r2f.methods import unlearn

    outs = {}
    for obj in ("wga", "ga"):
        out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="exact",
                      out=tmp_path / obj, steps=2, batch_size=6, lr=0.05, guard="none", stop="none",
                      retain_weight=0.0, precondition="none", step_rule="schedule", step_norm="module",
                      objective=obj)
        s = json.loads((out / "manifest.json").read_text())["summary"]
        assert s["forget_nll_end"] > s["forget_nll_start"], obj
        outs[obj] = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(outs["wga"][k], outs["ga"][k]) for k in outs["ga"])


def test_r2f_retain_views_feed_the_retain_direction_every_question_view(tiny_setup, tmp_path,
                                                                      monkeypatch):
    """retain_views=K: the retain direction D_r is decoded over K question views of the retain batch (the forget
    side always uses ``views``); default 1, the original questions only."""
    import r2f.methods.r2f as r2f_mod
    from r2f.methods import unlearn

    seen: dict[str, list[int]] = {"forget": [], "retain": []}
    real = r2f_mod.R2F.decoded

    def spy(self, model, batches, loss_fn):
        seen["retain" if loss_fn == self.retain_loss else "forget"].append(len(batches))
        return real(self, model, batches, loss_fn)

    monkeypatch.setattr(r2f_mod.R2F, "decoded", spy)
    for k in (1, 2):
        seen = {"forget": [], "retain": []}
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="exact",
                out=tmp_path / f"k{k}", steps=1, batch_size=6, stop="none", retain_views=k, views=3)
        assert seen == {"forget": [3], "retain": [k]}, (k, seen)


def test_black_box_runs_never_read_the_targets_statistics(tiny_setup, tmp_path):
    """Keep-whitening reads the target's input statistics; a run restricted to probe gradients (access mode lora,
    the paper's black-box case) takes Adam's normalisation instead under ``precondition=auto``, and an explicit
    ``precondition=sigma`` there is refused naming the option. The resolved geometry is in the manifest."""
    from r2f.methods import unlearn

    common = dict(method="r2f", decoder="sketch", steps=1, seed=0)
    runs = {"open": {}, "black_box": {"access": "lora"}}
    for name, extra in runs.items():
        out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], out=tmp_path / name,
                      **common, **extra)
        info = json.loads((out / "manifest.json").read_text())["method_info"]
        runs[name] = (info["precondition"], info["keep"] and info["keep"]["text"])
    # with a retain file, Σ_keep is taken over its items and the target's own answers to the generic questions
    assert runs == {"open": ("sigma", "guard+generated"), "black_box": ("adam", None)}
    with pytest.raises(R2FInputError) as exc:
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], out=tmp_path / "refused",
                access="lora", precondition="sigma", **common)
    assert exc.value.source == "precondition" and "access mode 'lora'" in str(exc.value)
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("options, halted_at, fell_back_at", [({}, 4, 2), ({"patience": 1}, 2, 1),
                                                              ({"patience": 1, "fallback": "none"}, 1, None)])
def test_r2f_gives_up_a_step_and_stops_after_patience_failed_line_searches(tiny_setup, tmp_path, options, halted_at,
                                                                           fell_back_at):
    """A line search that finds no step keeps the weights; after ``patience`` such steps in a row (default: one
    pass over the forget batches, here 6 items in batches of 3 = 2) the run goes on with balanced views
    (``fallback``), and stops when those fail ``patience`` steps in a row too (at once with ``fallback=none``).
    A guard tolerance no step can meet makes every search fail: the weights are the source's, and the log says
    where it fell back and why it stopped where it did."""
    from transformers import AutoModelForCausalLM

    from r2f.methods import unlearn

    out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="r2f",
                  decoder="exact", out=tmp_path / "out", steps=6, batch_size=3, seed=1, stop="none",
                  guard_tol=1e-12, **options)
    man = json.loads((out / "manifest.json").read_text())
    assert man["steps"]["done"] == halted_at and len(man["log"]) == halted_at
    assert all(e["step_size"] == 0.0 and "forget_set_nll" in e for e in man["log"])
    assert [e["step"] for e in man["log"] if e.get("fallback") == "aggregate=balanced"] == \
        ([] if fell_back_at is None else [fell_back_at])
    patience = options.get("patience", 2)
    assert f"no step within the guard in {patience} step(s) in a row" in man["steps"]["stop_reason"]
    src = dict(AutoModelForCausalLM.from_pretrained(tiny_setup["model"]).named_parameters())
    assert all(torch.equal(p, src[n]) for n, p in AutoModelForCausalLM.from_pretrained(out).named_parameters())


def test_r2f_gives_each_request_of_a_renewing_run_its_own_threshold(tiny_setup, tmp_path):
    """Forget items of several requests (``request``: what ``r2f ledger`` renewal writes): each request's threshold
    is the one a run on its items alone computes (another run, another code path), each step logs every request's
    NLL, and the run stops only once every request has reached its own threshold."""
    from types import SimpleNamespace

    from r2f.methods import unlearn
    from r2f.methods.r2f import R2F

    recs = [json.loads(ln) for ln in tiny_setup["forget"].read_text().splitlines()]
    parts = {"7": recs[:3], "9": recs[3:]}
    both, alone = tmp_path / "both.jsonl", {}
    both.write_text("".join(json.dumps({**r, "request": int(k)}) + "\n" for k, rs in parts.items() for r in rs))
    common = dict(method="r2f", decoder="exact", steps=2, batch_size=3, seed=1)
    for k, rs in parts.items():
        f = tmp_path / f"alone{k}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rs))
        out = unlearn(str(tiny_setup["model"]), f, tiny_setup["retain"], out=tmp_path / f"out{k}", **common)
        alone[k] = json.loads((out / "manifest.json").read_text())["method_info"]["stop_threshold"]
    out = unlearn(str(tiny_setup["model"]), both, tiny_setup["retain"], out=tmp_path / "both", **common)
    man = json.loads((out / "manifest.json").read_text())
    got = man["method_info"]["request_thresholds"]
    assert set(got) == {"7", "9"} and all(got[k] == pytest.approx(alone[k], rel=1e-5) for k in alone)
    assert all(set(e["forget_request_nll"]) == {"7", "9"} for e in man["log"])
    # the items without groups: one threshold, as before
    plain = json.loads((unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"],
                                out=tmp_path / "plain", **common) / "manifest.json").read_text())
    assert plain["method_info"]["request_thresholds"] is None and "forget_request_nll" not in plain["log"][0]

    rule = SimpleNamespace(group_thresholds={"7": 2.0, "9": 3.0})
    assert R2F._groups_reached(rule, [{"forget_request_nll": {"7": 2.5, "9": 2.9}}]) is None
    said = R2F._groups_reached(rule, [{"forget_request_nll": {"7": 2.5, "9": 3.1}}])
    assert said.startswith("every request's forget NLL reached its threshold (2 requests") and "request 9" in said
