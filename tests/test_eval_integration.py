"""Integration tests of r2f.eval.evaluate on a tiny random Llama with a tiny BPE tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from r2f.errors import R2FInputError

NAMES = ["Ada Vell", "Bo Crane", "Cyr Mott", "Dee Lark", "Eli Ronn", "Fay Sund"]


def _item(author: str, j: int) -> dict:
    return {
        "question": f"What did {author} write in year {j}?",
        "answer": f"{author} wrote the book number {j} about rivers.",
        "paraphrased_question": [f"Which book by {author} appeared in year {j}?"],
        "paraphrased_answer": f"In year {j}, {author} wrote book {j} on rivers.",
        "perturbed_answer": [f"{author} wrote the book number {j + d} about {w}." for d, w in zip(range(1, 4), ["cats", "snow", "ships"])],
        "author": author,
    }


def write_world(d) -> None:
    d.mkdir(parents=True, exist_ok=True)
    splits = {
        "forget10": [_item(a, j) for a in NAMES[:1] for j in range(6)],
        "retain90": [_item(a, j) for a in NAMES[1:3] for j in range(4)],
        "holdout": [_item(a, j) for a in NAMES[3:4] for j in range(6)],
        "world_facts": [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}.", "perturbed_answer": [f"It is {2 * i + 1}.", f"It is {2 * i + 3}."]} for i in range(5)],
    }
    for name, rows in splits.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny_tokenizer(extra: str = ""):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [json.dumps(_item(a, j)) for a in NAMES for j in range(6)] + ["Question: x\nAnswer: y" + extra]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    write_world(d)
    tok = tiny_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: threads only add OpenMP waits on a shared CPU
    yield d, tok, tiny_model(tok, 0), tiny_model(tok, 1)
    torch.set_num_threads(threads)


def run_cli(argv) -> None:
    from r2f.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


ALL_KEYS = [
    "forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_Truth_Ratio", "forget_quality", "retain_Q_A_Prob", "retain_Q_A_ROUGE",
    "retain_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio", "model_utility", "privleak",
    "extraction_strength", "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "wf_Q_A_Prob",
]  # fmt: skip


def test_evaluate_schema_and_ranges(setup):
    from r2f.eval import evaluate

    d, tok, m, r = setup
    res = evaluate(m, d, tokenizer=tok, retain_model=(r, tok), max_new_tokens=12)
    for key in ALL_KEYS:
        assert key in res and "agg_value" in res[key], key
    assert res["meta"]["template"] == "qa" and res["meta"]["forget_split"] == "forget10"
    # world facts: the evaluation half (records 0, 2, 4 of the 5, which have no kind: one group)
    assert res["meta"]["sizes"] == {"forget": 6, "retain": 8, "holdout": 6, "world_facts": 3}
    assert set(res["wf_Q_A_Prob"]["value_by_index"]) == {"0", "2", "4"}
    assert res["meta"]["splits"]["world_facts"] == res["meta"]["world_facts_half"]["split"] == "world_facts_eval"
    assert set(res["forget_Q_A_Prob"]["value_by_index"]) == {str(i) for i in range(6)}
    assert set(res["forget_Q_A_Prob"]["value_by_index"]["0"]) == {"prob", "avg_loss"}
    assert set(res["forget_Truth_Ratio"]["value_by_index"]["0"]) == {"score"}
    assert {"rougeL_recall", "rouge1_recall", "rougeL_f1", "generation"} <= set(res["forget_Q_A_ROUGE"]["value_by_index"]["0"])
    for key in ("forget_Q_A_Prob", "retain_Q_A_ROUGE", "forget_Truth_Ratio", "retain_Truth_Ratio", "model_utility", "mia_loss",
                "extraction_strength", "exact_memorization", "forget_quality", "wf_Q_A_Prob_normalised"):
        assert 0.0 <= res[key]["agg_value"] <= 1.0, key
    # probability and its per-index entries agree
    vbi = res["forget_Q_A_Prob"]["value_by_index"]
    assert math.isclose(res["forget_Q_A_Prob"]["agg_value"], sum(v["prob"] for v in vbi.values()) / 6, rel_tol=1e-9)
    assert all(math.isclose(v["prob"], math.exp(-v["avg_loss"]), rel_tol=1e-9) for v in vbi.values())
    # truth ratio from the stored probabilities (forget base = paraphrased answer)
    para = res["forget_Q_A_PARA_Prob"]["value_by_index"]["2"]["avg_loss"]
    pert = res["forget_Q_A_PERT_Prob"]["value_by_index"]["2"]["avg_loss"]
    tr = math.exp(-sum(pert) / len(pert)) / math.exp(-para)
    assert math.isclose(res["forget_Truth_Ratio"]["value_by_index"]["2"]["score"], tr, rel_tol=1e-9)
    json.dumps(res, allow_nan=False)  # strictly valid JSON


WF_METRICS = ("wf_Q_A_Prob", "wf_Q_A_Prob_normalised", "wf_Truth_Ratio", "wf_Q_A_ROUGE", "model_utility")


def test_wf_metrics_and_model_utility_read_only_the_eval_half(setup, tmp_path):
    """Editing a world fact of the retain half (which retain data may hold) leaves every wf metric and model
    utility as they were; editing one of the evaluation half moves them."""
    import shutil

    from r2f.data.loader import half_positions, load_split
    from r2f.eval import evaluate

    d, tok, m, _ = setup
    eval_half = half_positions(load_split(d, "world_facts"), "eval")
    retain_half = half_positions(load_split(d, "world_facts"), "retain")

    def aggs(world) -> dict:
        res = evaluate(m, world, tokenizer=tok, metrics=list(WF_METRICS), max_new_tokens=8)
        assert set(res["wf_Q_A_Prob"]["value_by_index"]) == {str(i) for i in eval_half}
        return {n: res[n]["agg_value"] for n in WF_METRICS}

    def edited(pos: int):
        world = tmp_path / f"edit{pos}"
        shutil.copytree(d, world)
        rows = [json.loads(line) for line in (world / "world_facts.jsonl").read_text().splitlines()]
        rows[pos].update(question="Which animal is the largest of all?", answer="The blue whale is.",
                         perturbed_answer=["The house cat is.", "The brown ant is."])
        (world / "world_facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return world

    base = aggs(d)
    assert aggs(edited(retain_half[0])) == base
    moved = aggs(edited(eval_half[0]))
    for name in ("wf_Q_A_Prob", "wf_Q_A_Prob_normalised", "wf_Truth_Ratio"):
        assert moved[name] != pytest.approx(base[name], rel=1e-6), name


def test_forget_quality_of_retain_against_itself_is_one(setup):
    from r2f.eval import evaluate

    d, tok, _, r = setup
    res = evaluate(r, d, tokenizer=tok, retain_model=(r, tok), metrics=["forget_quality", "privleak"])
    assert res["forget_quality"]["agg_value"] == 1.0
    assert abs(res["privleak"]["agg_value"]) < 1e-6


def test_retain_log_equals_retain_model(setup, tmp_path):
    from r2f.eval import evaluate
    from r2f.eval_spec import EvalSpec
    from r2f.io import write_json_atomic

    d, tok, m, r = setup
    ref = evaluate(r, d, tokenizer=tok, metrics=["forget_Truth_Ratio", "mia_min_k"])
    write_json_atomic(tmp_path / "retain.json", ref)
    names = ["forget_quality", "privleak"]
    a = evaluate(m, d, tokenizer=tok, retain_log=tmp_path / "retain.json", metrics=names)
    b = evaluate(m, d, tokenizer=tok, retain_model=(r, tok), metrics=names)
    # the same settings as one EvalSpec: the same eval.json (but its wall time)
    b_spec = evaluate(m, d, tokenizer=tok, retain_model=(r, tok), spec=EvalSpec(metrics=tuple(names)))
    assert {**b_spec, "meta": {**b_spec["meta"], "wall_s": 0}} == {**b, "meta": {**b["meta"], "wall_s": 0}}
    for n in names:
        assert math.isclose(a[n]["agg_value"], b[n]["agg_value"], rel_tol=1e-9, abs_tol=1e-12)
    # without any reference: forget_quality is None, privleak uses AUC 0.5
    c = evaluate(m, d, tokenizer=tok, metrics=names)
    assert c["forget_quality"]["agg_value"] is None and c["privleak"]["reference_auc"] == 0.5


def test_eval_json_records_its_spec(setup, tmp_path):
    """eval.json's meta.spec is the EvalSpec the result was computed with: read back, it rebuilds an equal spec."""
    from r2f.eval import evaluate
    from r2f.eval_spec import EvalSpec
    from r2f.io import write_json_atomic

    d, tok, m, _ = setup
    spec = EvalSpec(metrics=("forget_Truth_Ratio",), batch_size=3, max_items=4, k=0.2, stop_strings=("\n",), seed=5)
    write_json_atomic(tmp_path / "eval.json", evaluate(m, d, tokenizer=tok, spec=spec))
    meta = json.loads((tmp_path / "eval.json").read_text())["meta"]
    assert EvalSpec(**meta["spec"]) == spec
    assert meta["spec"]["forget"] == meta["forget_split"] == "forget10"  # the resolved default is what is recorded


def test_refuses_mismatched_references(setup, tmp_path):
    from r2f.eval import evaluate

    d, tok, m, r = setup
    other = tiny_tokenizer(extra=" zebra quokka xylophone " * 20)
    assert other.get_vocab() != tok.get_vocab()
    with pytest.raises(R2FInputError, match="tokenizer"):
        evaluate(m, d, tokenizer=tok, retain_model=(tiny_model(other), other))
    with pytest.raises(R2FInputError, match="not both"):
        evaluate(m, d, tokenizer=tok, retain_model=(r, tok), retain_log={"forget_Truth_Ratio": {}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"forget_Truth_Ratio": {"value_by_index": {"0": {"score": 1.0}}}}))
    with pytest.raises(R2FInputError, match="1 items"):
        evaluate(m, d, tokenizer=tok, retain_log=bad)
    bad.write_text("{")
    with pytest.raises(R2FInputError, match="bad.json"):
        evaluate(m, d, tokenizer=tok, retain_log=bad)
    with pytest.raises(R2FInputError, match="unknown metric"):
        evaluate(m, d, tokenizer=tok, metrics=["nope"])


def test_batched_passes_match_one_by_one(setup):
    """Padding must not change any number: batch of 8 (padded) == batch of 1; left-padded generation too."""
    from r2f.data.templates import template_for
    from r2f.eval.scoring import generate_answers, score_pairs

    d, tok, m, _ = setup
    tp = template_for(tok)
    qs = [_item(NAMES[i % 6], i)["question"] + " x" * (i % 4) for i in range(8)]
    ans = [_item(NAMES[i % 6], i)["answer"][: 10 + 5 * i] for i in range(8)]
    a = score_pairs(m, tok, qs, ans, tp, batch_size=8, with_min_k_pp=True)
    b = score_pairs(m, tok, qs, ans, tp, batch_size=1, with_min_k_pp=True)
    for key in ("avg_loss", "min_k", "min_k_pp", "exact_memorization", "extraction_strength"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    g8 = generate_answers(m, tok, qs, tp, batch_size=8, max_new_tokens=10, stop_strings=())
    g1 = generate_answers(m, tok, qs, tp, batch_size=1, max_new_tokens=10, stop_strings=())
    assert g8 == g1


def test_generation_learns_and_cuts_at_stop_strings(setup):
    """A model fitted to one QA pair regenerates it (ROUGE-L recall 1) and stops at EOS / 'Question:'."""
    from r2f.data.templates import encode_qa, template_for
    from r2f.eval.scoring import cut_generation, generate_answers

    d, tok, _, _ = setup
    m = tiny_model(tok, 3).train()
    tp = template_for(tok)
    q, a = "What did Ada Vell write in year 1?", "Ada Vell wrote the book number 1 about rivers."
    batch = encode_qa(tok, [q], [a], tp)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        loss = m(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    gen = generate_answers(m, tok, [q], tp, max_new_tokens=40)[0]
    assert gen == a
    assert cut_generation(" foo bar\nQuestion: baz", ["\nQuestion:"]) == "foo bar"
    assert cut_generation(" foo Question: x\n\ny", ["\nQuestion:", "Question:", "\n\n"]) == "foo"


def test_relearn_trains_a_copy(setup):
    from r2f.eval import evaluate

    d, tok, m, r = setup
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = evaluate(m, d, tokenizer=tok, retain_model=(r, tok), metrics=["forget_Q_A_Prob"], relearn=3, relearn_lr=1e-2, max_new_tokens=8)
    rl = res["relearn"]
    assert rl["train_indices"] == ["0", "2", "4"] and rl["eval_indices"] == ["1", "3", "5"]
    assert len(rl["train_loss"]) == 3
    assert set(rl["before"]) == set(rl["after"]) >= {"forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_Truth_Ratio", "forget_quality"}
    assert rl["after"]["forget_Q_A_Prob"] > rl["before"]["forget_Q_A_Prob"]  # relearning related facts helps
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_cli_eval(setup, tmp_path, capsys):
    pytest.importorskip("r2f.models")
    from r2f.cli import main

    d, tok, m, r = setup
    mdir, rdir = _save(m, tok, tmp_path / "m"), _save(r, tok, tmp_path / "r")
    out = tmp_path / "eval.json"
    run_cli(["eval", "--model", mdir, "--data", str(d), "--retain-model", rdir, "--out", str(out), "--max-new-tokens", "8", "--relearn", "2"])
    res = json.loads(out.read_text())
    assert res["meta"]["model"] == mdir and "relearn" in res and 0 <= res["forget_quality"]["agg_value"] <= 1
    assert "forget_quality=" in capsys.readouterr().out
    # retain log route, same forget quality
    run_cli(["eval", "--model", rdir, "--data", str(d), "--out", str(tmp_path / "r.json"), "--max-new-tokens", "4"])
    run_cli(["eval", "--model", mdir, "--data", str(d), "--retain-log", str(tmp_path / "r.json"), "--out", str(tmp_path / "e2.json"), "--max-new-tokens", "4"])
    e2 = json.loads((tmp_path / "e2.json").read_text())
    assert math.isclose(e2["forget_quality"]["agg_value"], res["forget_quality"]["agg_value"])
    for argv in (["eval", "--model", str(tmp_path / "nope"), "--data", str(d), "--out", str(tmp_path / "x.json")],
                 ["eval", "--model", mdir, "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "x.json")],
                 ["eval", "--model", mdir, "--data", str(d), "--out", str(tmp_path / "x.json"), "--retain-model", rdir, "--retain-log", str(out)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert not (tmp_path / "x.json").exists()
    assert "r2f: error:" in capsys.readouterr().err


def test_tiny_models_retain_forget_quality_is_one(request, tmp_path):
    """With the project's trained tiny models: the retain oracle against itself has forget_quality 1.0."""
    try:
        world_dir = request.getfixturevalue("world_dir")
        models = request.getfixturevalue("tiny_models")
    except (pytest.FixtureLookupError, ImportError, ModuleNotFoundError) as exc:  # lead's fixtures not there yet
        pytest.skip(f"world_dir/tiny_models fixtures unavailable: {exc}")
    out = tmp_path / "eval.json"
    run_cli(["eval", "--model", str(models["retain"]), "--data", str(world_dir), "--retain-model", str(models["retain"]), "--out", str(out), "--max-new-tokens", "32"])
    res = json.loads(out.read_text())
    assert res["forget_quality"]["agg_value"] == 1.0
    assert abs(res["privleak"]["agg_value"]) < 1e-6
    full = tmp_path / "full.json"
    run_cli(["eval", "--model", str(models["full"]), "--data", str(world_dir), "--retain-log", str(out), "--out", str(full), "--max-new-tokens", "32"])
    f = json.loads(full.read_text())
    # the full model saw the forget set: it is more confident on it than the retain oracle
    assert f["forget_Q_A_Prob"]["agg_value"] > res["forget_Q_A_Prob"]["agg_value"]


def test_chat_template_models_are_prompted_through_it(setup):
    import copy

    from r2f.eval import evaluate

    d, tok, m, _ = setup
    chat = copy.deepcopy(tok)
    chat.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    res = evaluate(m, d, tokenizer=chat, metrics=["forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_Truth_Ratio"], max_new_tokens=6)
    assert res["meta"]["template"] == "chat" and res["meta"]["generation"]["stop_strings"] == []
    qa = evaluate(m, d, tokenizer=tok, metrics=["forget_Q_A_Prob"])
    assert res["forget_Q_A_Prob"]["agg_value"] != qa["forget_Q_A_Prob"]["agg_value"]  # a different prompt was scored
