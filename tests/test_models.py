"""The model ladder, the cache, safe loading and SmolLM2 offline."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

from r2f.data import load_split
from r2f.data.templates import prompt_ids, template_for
from r2f.errors import R2FInputError
from r2f.models import load_model
from r2f.models.cache import cache_dir
from r2f.models.ladder import RECIPES


def greedy_rouge(model_dir, data_dir, split, limit=None, max_new_tokens=40):
    model, tok = load_model(model_dir)
    template = template_for(tok)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = []
    for item in load_split(data_dir, split)[:limit]:
        ids = torch.tensor([prompt_ids(tok, item.question, template)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        scores.append(scorer.score(item.answer, text)["rougeL"].recall)
    return sum(scores) / len(scores)


def test_ladder_shapes_proxy_is_narrower_and_shallower_than_small():
    assert RECIPES["proxy"].hidden < RECIPES["small"].hidden
    assert RECIPES["proxy"].layers < RECIPES["small"].layers


def test_tiny_models_load_with_auto_classes(tiny_models):
    for path in tiny_models.values():
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.model_type == "llama" and tok.eos_token == "</s>"
        meta = json.loads((path / "r2f_model.json").read_text())["r2f_model"]
        assert meta["template"] == "qa"
    assert sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_models["full"]).parameters()) < 1_000_000


def test_full_memorises_and_retain_oracle_does_not(tiny_models, world_dir):
    full_forget = greedy_rouge(tiny_models["full"], world_dir, "forget10")
    full_retain = greedy_rouge(tiny_models["full"], world_dir, "retain90", limit=48)
    retain_forget = greedy_rouge(tiny_models["retain"], world_dir, "forget10")
    assert full_forget >= 0.9 and full_retain >= 0.9
    assert retain_forget <= full_forget - 0.3


def test_training_is_cached(world_dir, tiny_models):
    from r2f.models.training import train_model

    start = time.perf_counter()
    again = train_model(world_dir, size="tiny", split="full")
    assert again == tiny_models["full"] and time.perf_counter() - start < 5
    assert str(again).startswith(str(cache_dir()))


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.delenv("R2F_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "r2f"
    monkeypatch.setenv("R2F_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_load_model_errors(tmp_path, tiny_models):
    with pytest.raises(R2FInputError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(R2FInputError, match="config.json missing"):
        load_model(tmp_path / "empty")
    # pickle-only weights are refused
    pick = tmp_path / "pickled"
    pick.mkdir()
    (pick / "config.json").write_text((tiny_models["full"] / "config.json").read_text())
    (pick / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(R2FInputError, match="pickle"):
        load_model(pick)
    # tokenizer missing
    notok = tmp_path / "notok"
    notok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (notok / name).write_bytes((tiny_models["full"] / name).read_bytes())
    with pytest.raises(R2FInputError, match="tokenizer"):
        load_model(notok)
    # not a causal LM
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (enc / "model.safetensors").write_bytes(b"")
    with pytest.raises(R2FInputError, match="not a causal LM"):
        load_model(enc)


@pytest.mark.slow
def test_small_memorises_forget_and_retain(world_dir):
    from r2f.models.training import train_model

    full = train_model(world_dir, size="small", split="full")
    retain = train_model(world_dir, size="small", split="retain")
    assert greedy_rouge(full, world_dir, "forget10") >= 0.9
    assert greedy_rouge(full, world_dir, "retain90") >= 0.9
    assert greedy_rouge(retain, world_dir, "forget10") <= greedy_rouge(full, world_dir, "forget10") - 0.3


@pytest.mark.slow
def test_smollm2_offline_knows_paris():
    model, tok = load_model("smollm2")
    template = template_for(tok)
    assert template.kind == "chat"
    ids = torch.tensor([prompt_ids(tok, "What is the capital of France?", template)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert os.path.isfile(cache_dir() / "models" / "smollm2-135m-instruct" / "model.safetensors")
