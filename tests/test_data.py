"""The world generator, the loader and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from r2f.data import QAItem, load_items, load_split
from r2f.data.templates import IGNORE_INDEX, PromptTemplate, encode_qa
from r2f.data.world import WorldConfig, generate_world, write_world
from r2f.errors import R2FInputError

_SPLITS = ("forget01", "forget05", "forget10", "retain99", "retain95", "retain90", "holdout", "proxy")
EXPECTED_FILES = ({f"{s}.jsonl" for s in _SPLITS} | {"world_facts.jsonl", "world.json"}
                  | {f"documents/{s}.jsonl" for s in _SPLITS})


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "r2f", *args], capture_output=True, text=True, cwd=cwd)


def test_world_is_deterministic_and_seed_sensitive(tmp_path):
    a = write_world(tmp_path / "a", WorldConfig(seed=0))
    b = write_world(tmp_path / "b", WorldConfig(seed=0))
    c = write_world(tmp_path / "c", WorldConfig(seed=1))
    assert {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()} == EXPECTED_FILES
    for f in EXPECTED_FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "forget10.jsonl").read_bytes() != (c / "forget10.jsonl").read_bytes()


def test_world_cli_byte_identical(tmp_path):
    for name in ("A", "B"):
        r = _cli("world", "--out", str(tmp_path / name), "--seed", "0")
        assert r.returncode == 0, r.stderr
    for f in EXPECTED_FILES:
        assert (tmp_path / "A" / f).read_bytes() == (tmp_path / "B" / f).read_bytes()


def test_world_splits_are_disjoint_and_nested():
    cfg = WorldConfig(seed=3)
    w = generate_world(cfg)
    authors = {k: {r["author"] for r in v} for k, v in w.items() if k != "world_facts"}
    assert authors["forget01"] <= authors["forget05"] <= authors["forget10"]
    for pct, keep in ((1, 99), (5, 95), (10, 90)):
        assert not authors[f"forget{pct:02d}"] & authors[f"retain{keep}"]
        assert len(authors[f"forget{pct:02d}"] | authors[f"retain{keep}"]) == cfg.authors
    target = authors["forget10"] | authors["retain90"]
    assert not target & authors["holdout"] and not target & authors["proxy"]
    assert not authors["holdout"] & authors["proxy"]
    assert len(w["forget10"]) == 4 * cfg.qa_per_author  # 10% of 40 authors


def test_biographies_are_long_answers_of_the_same_authors_and_facts(tmp_path):
    """documents/: one biography per author in the QA splits' author sets, a long answer (≥ 256 tokens even on a
    coarse tokenizer) restating the author's facts, with question views; the QA files are unchanged by it."""
    from r2f.data import load_split
    from r2f.data.world import DOCUMENTS_DIR, generate_documents

    cfg = WorldConfig(seed=3)
    qa, docs = generate_world(cfg), generate_documents(cfg)
    for split, bios in docs.items():
        assert [b["author"] for b in bios] == list(dict.fromkeys(r["author"] for r in qa[split])), split
    for bio in docs["forget10"]:
        facts = [r for r in qa["forget10"] if r["author"] == bio["author"]]
        for r in facts:  # every answer's words (dates, towns, titles) appear in the biography
            words = [w.strip(".,") for w in r["answer"].split() if w[:1].isupper() or w[:1].isdigit()]
            missing = [w for w in words if w not in ("On", "In", "The", "A", "Mostly") and w.lower() not in bio["answer"].lower()]
            assert not missing, (missing, r["answer"])
        assert bio["text"] == bio["answer"] and len(bio["answer"].split()) >= 256 * 0.75
        assert len(bio["paraphrased_question"]) == cfg.n_paraphrases
    out = write_world(tmp_path / "w", cfg)
    items = load_split(out / DOCUMENTS_DIR, "forget10")
    assert len(items) == 4 and items[0].model_extra["kind"] == "biography"
    assert json.loads((out / "world.json").read_text())["documents"]["sizes"]["forget10"] == 4


def test_items_have_views_paraphrase_and_plausible_perturbations():
    w = generate_world(WorldConfig(seed=0))
    for item in w["forget10"] + w["world_facts"]:
        q = QAItem.model_validate(item)
        assert len(q.paraphrased_question) >= 4 and len(q.views(5)) == 5
        assert q.paraphrased_answer and q.answer not in q.perturbed_answer
        assert len(set(q.perturbed_answer)) == 5
    birth = next(i for i in w["forget10"] if i["kind"] == "birth")
    # Same type and the paraphrased answer's sentence shape (the truth-ratio base): another date and town.
    name = birth["author"]
    assert all(p.startswith(f"{name} was born in ") for p in birth["perturbed_answer"])
    assert birth["paraphrased_answer"] not in birth["perturbed_answer"]


def test_loader_reads_tofu_json_and_string_paraphrase(tmp_path):
    tofu = [{"question": "Q1?", "answer": "A1.", "paraphrased_question": "Q1 again?",
             "paraphrased_answer": "A1 too.", "perturbed_answer": ["B.", "C."]},
            {"question": "Q2?", "answer": "A2."}]
    path = tmp_path / "forget10_perturbed.json"
    path.write_text(json.dumps(tofu))
    items = load_items(path)
    assert items[0].paraphrased_question == ["Q1 again?"] and items[1].perturbed_answer == []
    (tmp_path / "forget10.json").write_text(json.dumps({"data": tofu}))
    assert len(load_split(tmp_path, "forget10")) == 2


# ----------------------------------------------------------------------------- world-facts halves
def _kind(item: QAItem):
    return (item.model_extra or {}).get("kind")


@pytest.mark.parametrize("seed", [0, 5])
def test_world_facts_halves_partition_the_file_and_cover_every_kind(tmp_path, seed):
    from r2f.data.loader import load_split_positions

    world = write_world(tmp_path / "w", WorldConfig(seed=seed))
    facts = load_split(world, "world_facts")
    pos_r, retain = load_split_positions(world, "world_facts_retain")
    pos_e, evaluation = load_split_positions(world, "world_facts_eval")
    assert not set(pos_r) & set(pos_e) and sorted(pos_r + pos_e) == list(range(len(facts)))
    assert [facts[i] for i in pos_r] == retain and [facts[i] for i in pos_e] == evaluation
    assert not {it.question for it in retain} & {it.question for it in evaluation}
    kinds = {_kind(it) for it in facts}
    assert len(kinds) >= 3 and {_kind(it) for it in retain} == {_kind(it) for it in evaluation} == kinds
    for kind in kinds:  # alternating within a kind: the halves differ in size by at most one per kind
        n_r, n_e = (sum(_kind(it) == kind for it in half) for half in (retain, evaluation))
        assert n_e - n_r in (0, 1), kind
    # deterministic: a second world of the same seed gives the same halves
    again = write_world(tmp_path / "again", WorldConfig(seed=seed))
    assert load_split(again, "world_facts_eval") == evaluation


def test_halves_rule_on_files_without_kind_and_mixed_order(tmp_path):
    """The rule reads the records only: TOFU's world_facts (no kind) alternate in file order; interleaved kinds
    alternate within each kind; a kind with one record goes to the evaluation half."""
    from r2f.data.loader import half_positions

    plain = [QAItem(question=f"Q{i}?", answer="A.") for i in range(117)]  # TOFU's world_facts.json has 117
    assert half_positions(plain, "eval") == list(range(0, 117, 2))
    assert half_positions(plain, "retain") == list(range(1, 117, 2))
    kinds = ["a", "b", "a", "a", "b", "c", "a"]
    mixed = [QAItem(question=f"Q{i}?", answer="A.", kind=k) for i, k in enumerate(kinds)]
    assert half_positions(mixed, "eval") == [0, 1, 3, 5]   # a: 0, 3; b: 1; c: 5
    assert half_positions(mixed, "retain") == [2, 4, 6]    # a: 2, 6; b: 4
    with pytest.raises(ValueError):
        half_positions(mixed, "train")
    (tmp_path / "world_facts.json").write_text(json.dumps([it.model_dump() for it in plain]))
    assert len(load_split(tmp_path, "world_facts_eval")) == 59 and len(load_split(tmp_path, "world_facts_retain")) == 58
    (tmp_path / "empty").mkdir()
    with pytest.raises(R2FInputError, match="expected world_facts.jsonl"):
        load_split(tmp_path / "empty", "world_facts_eval")


@pytest.mark.parametrize("content,where", [
    ('{"question": "Q?", "answer": "A."}\n{"question": "Q?", "answer": \n', ":2: malformed JSON"),
    ('{"question": "Q?", "answer": "A."}\n{"question": "Q?"}\n', ":2: field 'answer': missing"),
    ('{"question": "Q?", "answer": 3}\n', ":1: field 'answer'"),
    ('{"question": "Q?", "answer": "A.", "perturbed_answer": "x"}\n', ":1: field 'perturbed_answer'"),
    ("", "no records (empty split)"),
])
def test_loader_errors_name_file_line_field(tmp_path, content, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(R2FInputError) as err:
        load_items(path)
    assert str(path) in str(err.value) and where in str(err.value)
    assert "\n" not in str(err.value)



@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_loader_names_line_and_byte_offset_of_non_utf8(tmp_path, bom):
    """A Latin-1 'é' in a UTF-8 file: the error says where, so it can be found (the offset counts the BOM)."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(bom + b'{"question": "Q?", "answer": "A."}\n{"question": "Caf\xe9?", "answer": "A."}\n')
    with pytest.raises(R2FInputError) as err:
        load_items(path)
    at = len(bom) + 35 + 17
    assert str(err.value) == (f"{path}:2: not valid UTF-8: byte 0xe9 at line 2, column 18 (byte offset {at})")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_read_items_digests_the_bytes_it_parsed(tmp_path, bom, monkeypatch):
    """One read of the file gives the records and the sha256 of its bytes (BOM included) that a manifest records."""
    import hashlib

    import r2f.data.loader as loader

    path = tmp_path / "f.jsonl"
    path.write_bytes(bom + '{"question": "Q\u2028?", "answer": "Café."}\n'.encode())
    reads = []
    monkeypatch.setattr(loader, "read_bytes", lambda p: reads.append(p) or path.read_bytes())
    items, digest = loader.read_items(path)
    assert [it.answer for it in items] == ["Café."] and len(reads) == 1
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_bad_data_exit_2_and_nothing_written(tmp_path):
    data = tmp_path / "data"
    write_world(data, WorldConfig(seed=0))
    lines = (data / "retain90.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-5]
    (data / "retain90.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "model"
    r = _cli("train", "--data", str(data), "--size", "tiny", "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "retain90.jsonl:5" in r.stderr
    assert not out.exists()
    (data / "retain90.jsonl").write_text("")
    r = _cli("train", "--data", str(data), "--size", "tiny", "--out", str(out))
    assert r.returncode == 2 and "empty split" in r.stderr and not out.exists()


def test_encode_qa_masks_prompt_and_appends_eos(tiny_models):
    from r2f.models import load_model

    _, tok = load_model(tiny_models["full"])
    batch = encode_qa(tok, ["Who?", "What is it?"], ["Me.", "A long answer here."], PromptTemplate("qa"))
    for row, lab, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        answer = row[lab != IGNORE_INDEX]
        assert answer[-1].item() == tok.eos_token_id
        assert tok.decode(answer[:-1]).strip() in ("Me.", "A long answer here.")
        assert (lab[mask == 0] == IGNORE_INDEX).all()


def test_world_doc_states_the_generator_defaults(world_dir):
    """docs/world.md's sizes are the default world's (they once said 6 QA per author after it became 8)."""
    import re
    from pathlib import Path

    from r2f.data.world import WorldConfig

    doc = (Path(__file__).resolve().parent.parent / "docs" / "world.md").read_text(encoding="utf-8")
    cfg = WorldConfig()
    lines = {name: sum(1 for _ in open(world_dir / f"{name}.jsonl", encoding="utf-8"))
             for name in ("forget01", "forget05", "forget10", "holdout", "world_facts")}
    assert f"(default {cfg.qa_per_author}, at most 8)" in doc
    assert f"defaults: {cfg.authors} target authors × {cfg.qa_per_author} QA" in doc
    assert f"— {lines['forget01']} / {lines['forget05']} / {lines['forget10']} items" in doc
    assert re.search(rf"{cfg.holdout_authors} authors never trained on .*— {lines['holdout']} items", doc)
    assert f"{lines['world_facts']} general facts" in doc
    assert f"{cfg.n_paraphrases} paraphrases by default" in doc
    assert f"the proxy's own {cfg.proxy_authors} authors" in doc
