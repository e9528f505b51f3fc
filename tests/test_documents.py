"""Documents as forget data (issue 18, item 1): loading, units and views, every method, document metrics, the
world's biographies and the fingerprint of the world and its models (which documents must not change)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r2f.errors import R2FInputError
from r2f.methods import METHODS

TEXTS = ["Mara Quill was born in Ashford in 1950. She wrote twelve novels about river ports and their keepers, "
         "and she won the Lark Prize in 1990 for the last of them. Today she lives in Welgate with two cats.",
         "Tobin Reyes grew up in a mining town. His first book, The Iron Clock, came out in 1971; his second, "
         "The Quiet Meadow, made his name. He now teaches in Kelmoor and writes every morning before class."]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def doc_setup(tmp_path_factory):
    """A random-init tiny Llama with its own tokenizer (a HF directory), a documents file and a QA retain file."""
    from r2f.models.ladder import build_model
    from r2f.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("documents")
    retain = [{"question": f"What does writer {i} like?", "answer": f"Writer {i} likes shade {i}."} for i in range(6)]
    tok = train_tokenizer(TEXTS + [r[k] for r in retain for k in ("question", "answer")], vocab_size=300)
    model = build_model("tiny", tok, seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    docs = [{"text": TEXTS[0], "paraphrases": [TEXTS[0].replace("born", "brought into the world")]},
            {"text": TEXTS[1]}]
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "retain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in retain))
    return {"root": root, "model": root / "model", "tok": tok, "docs": root / "docs.jsonl",
            "retain": root / "retain.jsonl"}


# ------------------------------------------------------------------------------------ loading
def test_documents_load_from_jsonl_json_and_txt(tmp_path):
    from r2f.data.loader import load_documents, read_records
    from r2f.data.schema import Document, QAItem

    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "One.", "paraphrases": ["Uno."], "author": "x"}) + "\n\n"
                                      + json.dumps({"text": "Two."}) + "\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"text": "One."}]}))
    (tmp_path / "d.txt").write_text("A whole file\nis one document.\n")
    docs, sha = read_records(tmp_path / "d.jsonl")
    assert [type(d) for d in docs] == [Document, Document] and docs[0].paraphrases == ["Uno."]
    assert docs[0].model_extra["author"] == "x" and sha == hashlib.sha256((tmp_path / "d.jsonl").read_bytes()).hexdigest()
    assert load_documents(tmp_path / "d.json")[0].text == "One."
    assert read_records(tmp_path / "d.txt")[0][0].text == "A whole file\nis one document.\n"
    # a record with a question is a QA item (auto), read as a document only when asked (the world's biographies)
    (tmp_path / "bio.jsonl").write_text(json.dumps({"question": "Who?", "answer": "Her.", "text": "Her."}) + "\n")
    assert isinstance(read_records(tmp_path / "bio.jsonl")[0][0], QAItem)
    assert isinstance(read_records(tmp_path / "bio.jsonl", "documents")[0][0], Document)


@pytest.mark.parametrize("content, where, message", [
    ('{"text": "fine"}\n{"title": "no text"}\n', "d.jsonl:2", "field 'text': missing"),
    ('{"text": "fine"}\n{"text": "  \\u200b "}\n', "d.jsonl:2", "field 'text'"),
    ('{"text": "fine"}\n{"text": 3}\n', "d.jsonl:2", "field 'text'"),
    ('{"text": "fine", "paraphrases": ["ok", " "]}\n', "d.jsonl:1", "field 'paraphrases'"),
    ('{"text": "fine"}\n{"text": \n', "d.jsonl:2", "malformed JSON"),
    ('{"text": "fine"}\n["a list"]\n', "d.jsonl:2", "expected a JSON object"),
])
def test_bad_document_records_name_file_and_line(tmp_path, content, where, message):
    from r2f.data.loader import read_records

    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(R2FInputError) as exc:
        read_records(tmp_path / "d.jsonl")
    assert str(exc.value).startswith(str(tmp_path / where)) and message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_blank_txt_document_and_a_txt_as_qa_are_refused(tmp_path):
    from r2f.data.loader import read_records

    (tmp_path / "blank.txt").write_text(" \n\t\n")
    with pytest.raises(R2FInputError, match="blank.txt.*field 'text'"):
        read_records(tmp_path / "blank.txt")
    (tmp_path / "doc.txt").write_text("Some text.")
    with pytest.raises(R2FInputError, match="doc.txt.*not QA items"):
        read_records(tmp_path / "doc.txt", "qa")
    with pytest.raises(R2FInputError, match="unknown kind"):
        read_records(tmp_path / "doc.txt", "pdf")


def test_cli_bad_document_exits_2_with_one_line(doc_setup, tmp_path, capsys):
    from r2f.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"paraphrases": []}\n')
    with pytest.raises(SystemExit) as exc:
        main(["unlearn", "--model", str(doc_setup["model"]), "--forget", str(bad), "--method", "grad_ascent",
              "--out", str(tmp_path / "out"), "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2" in err[0] and "field 'text': missing" in err[0]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ units and views
def test_units_cut_a_document_into_chunks_with_paraphrase_and_prefix_views(doc_setup):
    from r2f.data.batching import DocBatch, document_tokens, document_units
    from r2f.data.schema import Document
    from r2f.data.templates import IGNORE_INDEX

    tok = doc_setup["tok"]
    docs = [Document(text=TEXTS[0], paraphrases=[TEXTS[1]]), Document(text=TEXTS[1])]
    width = 16
    units = document_units(tok, docs, width, 512)
    ids0, ids1 = document_tokens(tok, TEXTS[0]), document_tokens(tok, TEXTS[1])
    assert ids0[-1] == tok.eos_token_id
    for d, ids in ((0, ids0), (1, ids1)):
        mine = [u for u in units if u.doc == d]
        assert [t for u in mine for t in u.target] == ids  # the chunks are the document's tokens, in order
        assert all(len(u.target) == width for u in mine[:-1]) and width // 4 <= len(mine[-1].target) < 2 * width
        assert [u.start for u in mine] == [sum(len(v.target) for v in mine[:i]) for i in range(len(mine))]
    bos = (tok.bos_token_id,)
    first, second = units[0], units[1]
    assert first.view_ids[0] == (bos, first.target)
    assert len(first.view_ids) == 2  # the paraphrase's first chunk; no text before the first chunk
    n = len([u for u in units if u.doc == 0])
    assert first.view_ids[1] == (bos, tuple(ids1[: len(ids1) // n]))
    # the second chunk: itself, the paraphrase's second piece, then the chunk after 4, 8, 12 tokens of text
    assert [len(c) - 1 for c, _ in second.view_ids[2:]] == [4, 8, 12]
    assert all(t == second.target for _, t in second.view_ids[2:])
    assert second.view_ids[3][0] == bos + tuple(ids0[width - 8: width])
    # a batch: labels on the chunk's tokens, -100 on BOS, context and padding; views cycle, stacked view by view
    batch = DocBatch([first, second], [0, 1], 0, None, torch.device("cpu"))
    lab = batch.inputs["labels"]
    assert lab[0, 0] == IGNORE_INDEX and lab[0, 1:1 + width].tolist() == list(first.target)
    views = batch.views(4)
    assert len(views) == 4 and views[0] is batch.inputs
    assert views[2]["input_ids"][0].tolist()[:1 + width] == list(bos + first.target)  # cycles: view 2 = view 0
    row = views[3]["labels"][1].tolist()
    assert row[:9] == [IGNORE_INDEX] * 9 and row[9:9 + width] == list(second.target)
    assert batch.stacked(4)["input_ids"].shape[0] == 8 and batch.stacked(1) is batch.inputs


def test_units_respect_max_length_and_refuse_a_document_without_tokens(doc_setup):
    from r2f.data.batching import document_units
    from r2f.data.schema import Document

    tok = doc_setup["tok"]
    units = document_units(tok, [Document(text=TEXTS[0])], 128, 20)
    assert all(len(c) + len(t) <= 20 for u in units for c, t in u.view_ids)

    class Empty:
        bos_token_id, eos_token_id = 1, 2

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": []}

    with pytest.raises(R2FInputError, match="docs.jsonl:3.*tokenizes to no tokens"):
        document_units(Empty(), [Document(text="x")], locations=["docs.jsonl:3"])


def test_qa_views_still_come_from_the_one_builder():
    from r2f.data.batching import cycled_views, view_pairs
    from r2f.data.schema import QAItem

    items = [QAItem(question="q", answer="a", paraphrased_question=["q1", "q2"]), QAItem(question="r", answer="b")]
    assert cycled_views([["q", "q1", "q2"], ["r"]], 3) == [["q", "r"], ["q1", "r"], ["q2", "r"]]
    assert view_pairs(items, 3) == [(["q", "r"], ["a", "b"]), (["q1", "r"], ["a", "b"]), (["q2", "r"], ["a", "b"])]


# ------------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_unlearns_documents(method, doc_setup, tmp_path):
    from transformers import AutoModelForCausalLM

    from r2f.methods import unlearn

    extra = {"r2f": {"decoder": "sketch"}, "exact": {},
             "rmu": {"module_regex": r"model\.layers\.1"}}.get(method, {})
    out = unlearn(str(doc_setup["model"]), doc_setup["docs"], doc_setup["retain"], method=method, out=tmp_path / "o",
                  steps=2, batch_size=2, seed=1, chunk_tokens=16, **extra)
    man = json.loads((out / "manifest.json").read_text())
    assert man["data"]["forget"]["kind"] == "documents" and man["data"]["forget"]["units"] > 2
    assert man["config"]["documents"] == {"chunk_tokens": 16}
    assert 1 <= man["steps"]["done"] <= 2 and math.isfinite(man["summary"]["forget_nll_start"])
    AutoModelForCausalLM.from_pretrained(out)


def test_chunk_tokens_and_documents_settings_are_checked_where_specs_are_made(doc_setup, tmp_path):
    """--chunk-tokens is refused by unlearn before any work and by every RunSpec made with documents; --documents is
    an EvalSpec setting, world only (refused with --bench realfacts before a model loads)."""
    import dataclasses

    import r2f
    from r2f.eval_spec import EvalSpec
    from r2f.methods import unlearn
    from r2f.methods.api import RunSpec

    for bad in (0, 2.5, True):
        with pytest.raises(R2FInputError) as exc:
            unlearn(str(doc_setup["model"]), doc_setup["docs"], doc_setup["retain"], method="npo",
                    out=tmp_path / "o", steps=1, chunk_tokens=bad)
        assert exc.value.source == "--chunk-tokens" and not (tmp_path / "o").exists()
    spec = RunSpec(method="npo", options={}, steps=1, lr=1e-3, batch_size=2, seed=0, max_length=None, optimizer=None,
                   documents={"chunk_tokens": 16})
    assert spec.config()["documents"] == {"chunk_tokens": 16} and spec.engine_config().chunk_tokens == 16
    with pytest.raises(R2FInputError, match="chunk-tokens"):
        dataclasses.replace(spec, documents={"chunk_tokens": 0})
    assert EvalSpec(documents="forget10").documents == "forget10" and EvalSpec().documents is None
    with pytest.raises(R2FInputError) as exc:
        r2f.evaluate("no-such-model", None, bench="realfacts", documents="forget10")
    assert exc.value.source == "--documents" and "only for --bench world" in str(exc.value)


@pytest.mark.parametrize("decoder", ["lora", "ls", "sigma", "exact"])
def test_r2f_probe_and_decoders_on_documents(decoder, doc_setup, tmp_path):
    """R2F's LoRA probe on document views, decoded by each built-in decoder (sigma: Σ from the retain text)."""
    from r2f.methods import unlearn

    out = unlearn(str(doc_setup["model"]), doc_setup["docs"], doc_setup["retain"], method="r2f", decoder=decoder,
                  out=tmp_path / "o", steps=1, batch_size=2, chunk_tokens=16, stop="none", step_rule="schedule")
    man = json.loads((out / "manifest.json").read_text())
    assert man["steps"]["done"] == 1 and man["method_info"]["decoder"]["name"] == decoder
    assert man["changed_parameters"]


def test_retain_documents_are_retain_units(doc_setup, tmp_path):
    """--retain-kind documents: the retain file's documents are cut into units too (the retain term sees them)."""
    from r2f.methods import unlearn

    out = unlearn(str(doc_setup["model"]), doc_setup["retain"], doc_setup["docs"], method="grad_diff",
                  out=tmp_path / "o", steps=1, batch_size=2, retain_kind="documents", chunk_tokens=16)
    man = json.loads((out / "manifest.json").read_text())
    assert man["data"]["retain"]["kind"] == "documents" and "kind" not in man["data"]["forget"]
    assert man["config"]["documents"] == {"chunk_tokens": 16} and "retain_nll" in man["log"][0]


def test_document_loss_is_the_lm_loss_on_every_token(doc_setup):
    """The engine's forget signal on one unit equals the mean next-token NLL of the chunk after BOS."""
    from transformers import AutoModelForCausalLM

    from r2f.data.batching import document_tokens
    from r2f.data.schema import Document
    from r2f.methods import get_method
    from r2f.distributed import ONE_PROCESS
    from r2f.methods.engine import Engine, EngineConfig

    model = AutoModelForCausalLM.from_pretrained(doc_setup["model"]).eval()
    tok = doc_setup["tok"]
    engine = Engine(model, tok, [Document(text=TEXTS[1])], None, get_method("grad_ascent"),
                    EngineConfig(steps=1, lr=1e-3, chunk_tokens=1000), dp=ONE_PROCESS)
    ids = [tok.bos_token_id] + document_tokens(tok, TEXTS[1])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
        hand = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]))
    assert len(engine.forget) == 1
    assert engine.mean_nll(model, engine.forget) == pytest.approx(float(hand), rel=1e-5)


def test_r2f_shuffled_stop_rule_on_documents(doc_setup, tmp_path):
    """The default stop rule has a document form: each unit's first half with another document's second half."""
    from r2f.data.batching import shuffled_unit_pairs, document_units
    from r2f.data.schema import Document
    from r2f.methods import unlearn

    units = document_units(doc_setup["tok"], [Document(text=t) for t in TEXTS], 16, 512)
    pairs = shuffled_unit_pairs(units, [1])
    assert pairs and all(c[0] == 1 for c, _ in pairs)
    by_pos = {(u.doc, u.chunk): u for u in units}
    u0, u1 = by_pos[(0, 0)], by_pos[(1, 0)]
    assert pairs[0] == ([1] + list(u0.target[:8]), list(u1.target[8:]))
    out = unlearn(str(doc_setup["model"]), doc_setup["docs"], doc_setup["retain"], method="r2f", decoder="ls",
                  out=tmp_path / "o", steps=2, batch_size=2, chunk_tokens=16)
    info = json.loads((out / "manifest.json").read_text())["method_info"]
    assert math.isfinite(info["stop_threshold"])
    # on documents the line search's run budget is 0.04 (a unit's mean NLL dilutes a change); an explicit one wins
    assert info["guard"]["budget"] == 0.04 and (info["watch"] is None or info["watch"]["budget"] == 0.04)
    out = unlearn(str(doc_setup["model"]), doc_setup["docs"], doc_setup["retain"], method="r2f", decoder="ls",
                  out=tmp_path / "o2", steps=1, batch_size=2, chunk_tokens=16, guard_budget=0.08)
    assert json.loads((out / "manifest.json").read_text())["method_info"]["guard"]["budget"] == 0.08


# ------------------------------------------------------------------------------------ metrics
class WordTokenizer:
    """Words ``w<id>`` ↔ ids; BOS 1, EOS 2, PAD 0."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w[1:]) for w in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if i > 2)


class NextIdModel(torch.nn.Module):
    """Predicts token t+1 after token t: logit ``c`` there, 0 elsewhere (a known continuation and known losses)."""

    def __init__(self, vocab=64, c=3.0):
        super().__init__()
        self.vocab, self.c = vocab, c
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(-1, ((input_ids + 1) % self.vocab)[..., None], self.c)
        return SimpleNamespace(logits=logits)


def test_extraction_rouge_and_loss_mia_against_hand_values():
    from r2f.data.batching import document_units
    from r2f.data.schema import Document
    from r2f.eval.documents import document_losses, extraction, mia_loss

    tok, model = WordTokenizer(), NextIdModel()
    remembered = Document(text=" ".join(f"w{i}" for i in range(10, 18)))        # consecutive ids: followed
    other = Document(text=" ".join(f"w{i}" for i in range(20, 36, 2)))           # even ids: not
    units = document_units(tok, [remembered, other], 8, None)
    assert len(units) == 2  # 8 words + EOS: the one-token tail joins its chunk
    ext = extraction(model, tok, units, prefix_tokens=4)
    # remembered: prompt w10..w13 -> w14 w15 w16 w17 (all 4 of the truth); other: w20..w26 -> w27 w28 w29 w30
    # against w28 w30 w32 w34: longest common subsequence w28 w30, recall 2/4
    assert ext["value_by_index"] == {"0": {"rougeL_recall": 1.0}, "1": {"rougeL_recall": 0.5}}
    assert ext["agg_value"] == pytest.approx(0.75)
    # per-token loss: 9 predicted tokens each (BOS -> first word ... last word -> EOS)
    hit = -math.log(math.exp(3) / (math.exp(3) + 63))
    miss = -math.log(1 / (math.exp(3) + 63))
    losses = document_losses(model, tok, units)
    assert losses["0"] == pytest.approx((7 * hit + 2 * miss) / 9, rel=1e-5)
    assert losses["1"] == pytest.approx(miss, rel=1e-5)
    mia = mia_loss({"0": losses["0"]}, {"0": losses["1"]})
    assert mia["agg_value"] == 1.0 and mia["value_by_index"] == {"0": {"score": losses["0"]}}
    assert mia_loss({"0": 1.0, "1": 3.0}, {"0": 2.0, "1": 3.0})["agg_value"] == pytest.approx(0.625)


def test_greedy_continuations_are_the_same_left_padded_in_a_batch():
    from r2f.eval.documents import greedy_continuations

    model = NextIdModel()
    prompts, lengths = [[1, 10, 11], [1, 5], [1, 60, 61, 62]], [3, 2, 4]
    together = greedy_continuations(model, prompts, lengths, pad=0, eos=2, batch_size=8)
    alone = [greedy_continuations(model, [p], [n], pad=0, eos=2)[0] for p, n in zip(prompts, lengths)]
    assert together == alone == [[12, 13, 14], [6, 7], [63, 0, 1]]  # 63, 0, 1, then 2 = EOS: cut there


# ------------------------------------------------------------------------------------ the world and its models
#: sha256 of every file of the default world (seed 0), computed on the code before documents became forget data
#: (commit 336827b): the QA splits, world.json and the biographies must stay byte-identical.
PINNED_WORLD = {
    "documents/forget01.jsonl": "cc2d547412c6e90395b508f15bb1a99954b668cd2837b99bf7142caf630aa0f4",
    "documents/forget05.jsonl": "202f60b23a46e60fdc6ba92addca567f9bd1706feb95ed826bd4d61dc32f1a41",
    "documents/forget10.jsonl": "3840a41fca222e6a737f2779223a86ecbcd49d623b658f7d1f9400bcbfe4e77e",
    "documents/holdout.jsonl": "cb9764761ad5f1ec5c00a5f048cb229918a14e41ec2b6a5385db3b125d66f728",
    "documents/proxy.jsonl": "d585fea247852e1fb968243402748d4f5911148841c1590840aa9e58728cac49",
    "documents/retain90.jsonl": "68ce27544b9fa427731bd969d62ff57b52adff9136f2f811fbc9ac773ee61ccb",
    "documents/retain95.jsonl": "796ace3b3483548bf06e34f60f80ce580c01acda7f577afe05316a1cff47aeb4",
    "documents/retain99.jsonl": "5e6cc6ba93bf1233b9add9868c51814fd0a1a411fac841fee03c0c06cd1b2075",
    "forget01.jsonl": "49484cff7013077b10f25a256f3b91113c5a3fda3f20ff8b3a0fca549bd01c84",
    "forget05.jsonl": "ba002a1ae77b705a7c054fce8c39823e79cc478443569bb58faf2dbc9ff5d57b",
    "forget10.jsonl": "7f9ec0ce579ef3d01b0bc232143f6e95488663d252456e7f2ca8dda1aeb044b7",
    "holdout.jsonl": "bf13d851b6cca31c783f75a61df68d3e594b39312b6355dc194e7a8ea2839bcc",
    "proxy.jsonl": "6b23defb7231862d9e9cc36ce62e5ed04cd5546cf7723651cd97f810c2d7b1c1",
    "retain90.jsonl": "938ca75d9a2b563aad1a02d5d1fc5785f41e6ccbc8725768d7d04f7655b8a579",
    "retain95.jsonl": "139a4b7bc0a1a71461d14afd9a3375caf5145898188be24b5c4ef579ceb558f0",
    "retain99.jsonl": "e6223833a6a0a79b9ce58a1b5f49ddc3f01c93636c661ffa59f6201a8e37c312",
    "world.json": "611fa37b0dceddce943fdd6e1d2caa90042b391ed2a94240d63dd6a1f950de7b",
    "world_facts.jsonl": "4ed4514bdf5be1bdba3a49a9eceb6f4ee6a1937b018146d8b41cdafa3e574dca",
}
#: the models' cache keys on that world (same commit): every cached model, the demo and the benchmarks use them
PINNED_KEYS = {("tiny", "full"): "46fd9e2839ca6a38", ("tiny", "retain"): "f22eea13a06f64cd",
               ("small", "full"): "f3fe1827618d657d", ("small", "retain"): "349e5ccbea65f562",
               ("proxy", "full"): "d1d19e647d1f651d", ("proxy", "retain"): "12157d05a1f558ef"}


def test_world_files_and_model_cache_keys_are_unchanged(world_dir):
    from r2f.models.training import cache_key

    files = {str(p.relative_to(world_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(Path(world_dir).rglob("*")) if p.is_file()}
    assert files == PINNED_WORLD
    for (size, split), key in PINNED_KEYS.items():
        assert cache_key(Path(world_dir), size, split, "forget10", 0) == key
        with_docs = cache_key(Path(world_dir), size, split, "forget10", 0, documents=True)
        assert with_docs != key and len(with_docs) == 16


def test_biography_splits_match_the_qa_authors(world_dir):
    from r2f.data.loader import load_documents, load_split

    for split in ("forget01", "forget05", "forget10", "retain90", "holdout", "proxy"):
        docs = load_documents(Path(world_dir) / "documents" / f"{split}.jsonl")
        authors = {d.model_extra["author"] for d in docs}
        assert authors == {it.author for it in load_split(world_dir, split)} and len(docs) == len(authors)
        assert all(len(d.text.split()) >= 200 for d in docs)


def test_training_documents_are_the_same_authors_biographies(world_dir):
    from r2f.models.training import training_documents

    names = lambda docs: sorted(d.model_extra["author"] for d in docs)  # noqa: E731
    full = training_documents(Path(world_dir), "small", "full", "forget10")
    retain = training_documents(Path(world_dir), "small", "retain", "forget10")
    forget = [d for d in full if d not in retain]
    from r2f.data.loader import load_split

    assert names(forget) == sorted({it.author for it in load_split(world_dir, "forget10")})
    assert names(retain) == sorted({it.author for it in load_split(world_dir, "retain90")})
    assert len(training_documents(Path(world_dir), "proxy", "full", "forget10")) == 20


@pytest.mark.slow
def test_a_model_trained_with_documents_is_its_own_cache_entry(world_dir):
    from r2f.models.training import train_model

    plain = train_model(world_dir, size="tiny", split="retain")
    docs = train_model(world_dir, size="tiny", split="retain", documents=True)
    assert plain != docs and "-docs-" in docs.name
    meta = json.loads((docs / "r2f_model.json").read_text())["r2f_model"]
    assert meta["documents"]["n_documents"] == 36


def test_eval_documents_option_writes_document_metrics(world_dir, doc_setup, tmp_path):
    from r2f.cli import main

    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as exc:  # a random tiny model: the layout is under test, not the numbers
        main(["eval", "--model", str(doc_setup["model"]), "--data", str(world_dir), "--documents", "forget10",
              "--out", str(out), "--max-items", "2", "--max-new-tokens", "4"])
    assert exc.value.code == 0
    ev = json.loads(out.read_text())
    for name in ("doc_forget_extraction", "doc_retain_extraction", "doc_holdout_extraction", "doc_mia_loss"):
        assert set(ev[name]) >= {"agg_value", "value_by_index"} and name in ev["summary"]
    assert ev["meta"]["documents"]["split"] == "forget10" and ev["meta"]["documents"]["documents"]["forget"] == 2
    assert set(ev["doc_forget_extraction"]["value_by_index"]) == {"0", "1"}


def test_r2f_document_fact_tokens_leave_the_shared_tokens_out_of_the_forget_loss(doc_setup, tmp_path):
    """``document_tokens="fact"``: on forget documents the loss skips the tokens found in at least ``format_share``
    of the forget units and the guard's answers (counted here by hand); the default reads every token."""
    from collections import Counter

    from r2f.data.loader import load_items
    from r2f.data.schema import Document
    from r2f.data.templates import IGNORE_INDEX
    from r2f.distributed import ONE_PROCESS
    from r2f.methods import get_method, unlearn
    from r2f.methods.engine import Engine, EngineConfig
    from transformers import AutoModelForCausalLM

    share = 0.3
    model = AutoModelForCausalLM.from_pretrained(doc_setup["model"]).eval()
    engine = Engine(model, doc_setup["tok"], [Document(text=t) for t in TEXTS], load_items(doc_setup["retain"]),
                    get_method("grad_diff"), EngineConfig(steps=1, lr=1e-3, chunk_tokens=16), dp=ONE_PROCESS)
    rows = [set(u.target) for u in engine.forget]
    labels = engine.make_batch(engine.retain).inputs["labels"]
    rows += [set(r[r != IGNORE_INDEX].tolist()) for r in labels]
    counts = Counter(t for r in rows for t in r)
    shared = {t for t, c in counts.items() if c >= share * len(rows)}
    assert shared and len(shared) < len(counts)

    def tokens_info(out):
        return json.loads((out / "manifest.json").read_text())["method_info"]["answer_tokens"]

    kw = dict(method="r2f", decoder="ls", steps=1, batch_size=2, chunk_tokens=16, stop="none", format_share=share)
    fact = unlearn(str(doc_setup["model"]), doc_setup["docs"], doc_setup["retain"], out=tmp_path / "fact",
                   document_tokens="fact", **kw)
    assert tokens_info(fact) == {"mode": "fact", "format_tokens": len(shared)}
    every = unlearn(str(doc_setup["model"]), doc_setup["docs"], doc_setup["retain"], out=tmp_path / "all", **kw)
    assert tokens_info(every) == {"mode": "all"}
