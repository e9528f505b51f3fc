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


def _random_llama(tie: bool, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=tie, **extra)
    return LlamaForCausalLM(cfg).eval()


def _qa_batch():
    ids = torch.randint(0, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    labels[1, 7:] = -100
    labels[2, :6] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("tie", [True, False])
def test_answer_only_logits_match_full_logits(tie):
    """The answer-positions-only head gives Hugging Face's loss and the same per-sequence NLLs and gradients."""
    from r2f.models.answer_nll import _body_and_head, sequence_nll, token_mean_answer_nll

    model, batch = _random_llama(tie), _qa_batch()
    assert _body_and_head(model) is not None  # the fast path is taken
    full = model(**batch)
    logp = torch.log_softmax(full.logits[:, :-1].double(), -1)
    tgt = batch["labels"][:, 1:]
    keep = tgt != -100
    want = -(logp.gather(-1, tgt.clamp_min(0)[..., None])[..., 0] * keep).sum(1)
    sums, counts = sequence_nll(model, batch)
    assert counts.tolist() == keep.sum(1).tolist()
    torch.testing.assert_close(sums.double(), want, rtol=1e-5, atol=1e-5)
    loss = token_mean_answer_nll(model, batch)
    torch.testing.assert_close(loss, full.loss, rtol=1e-5, atol=1e-6)
    g_fast = torch.autograd.grad(loss, list(model.parameters()))
    g_full = torch.autograd.grad(model(**batch).loss, list(model.parameters()))
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_answer_nll_falls_back_when_logits_are_transformed(monkeypatch):
    from r2f.models import answer_nll

    model, batch = _random_llama(True), _qa_batch()
    model.config.final_logit_softcapping = 30.0
    assert answer_nll._body_and_head(model) is None
    calls = []
    orig = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    answer_nll.sequence_nll(model, batch)
    assert calls  # went through the model's own forward


def test_pretrained_base_is_fine_tuned_not_modified(world_dir, tiny_models, monkeypatch, tmp_path):
    """``--size smollm2`` fine-tunes a pretrained base (here the tiny model stands in for SmolLM2): its own
    tokenizer is kept, the base directory is untouched, and the result is cached like a ladder model."""
    import hashlib

    from r2f.models import loading, training
    from r2f.models.ladder import Recipe

    base = tiny_models["full"]
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in base.iterdir() if p.is_file()}
    monkeypatch.setitem(RECIPES, "smollm2", Recipe(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                                                     epochs=1, lr=1e-3, base="smollm2"))
    real_load = loading.load_model
    # where training calls it (it imports load_model at module level)
    monkeypatch.setattr(training, "load_model", lambda name, **kw: real_load(base if name == "smollm2" else name, **kw))
    monkeypatch.setenv("R2F_CACHE", str(tmp_path / "cache"))
    out = training.train_model(world_dir, size="smollm2", split="retain", out=tmp_path / "ft")
    meta = json.loads((out / "r2f_model.json").read_text())["r2f_model"]
    assert meta["size"] == "smollm2" and meta["split"] == "retain"
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()  # tokenizer kept
    tuned, _ = load_model(out)
    orig, _ = load_model(base)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), orig.state_dict().values()))
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in base.iterdir() if p.is_file()}
    with pytest.raises(ValueError):
        from r2f.models.ladder import build_model

        build_model("smollm2", None)  # a pretrained base is never built from scratch


def test_the_wide_proxy_has_smollm2s_module_shapes_on_fewer_layers():
    """The proxy ladder's wide member exists to put SmolLM2's shape features inside the decoder's training range."""
    from r2f.models.loading import resolve_model_dir

    cfg = json.loads((resolve_model_dir("smollm2") / "config.json").read_text())
    wide = RECIPES["proxy_wide"]
    assert (wide.hidden, wide.intermediate, wide.heads, wide.kv_heads) == (
        cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"])
    assert wide.layers < cfg["num_hidden_layers"] and wide.base is None


def test_a_ladder_member_speaks_a_pretrained_tokenizer_and_template(world_dir, monkeypatch, tmp_path):
    """``proxy_smoltok``: a fresh model with SmolLM2's tokenizer and chat template, trained on the proxy pool (here a
    tiny shape for one epoch): its vocabulary and prompt format are SmolLM2's, its items the proxy authors'."""
    from r2f.models import training
    from r2f.models.ladder import PROXY_SIZES, Recipe
    from r2f.models.loading import resolve_model_dir

    assert "proxy_smoltok" in PROXY_SIZES
    monkeypatch.setitem(RECIPES, "proxy_smoltok", Recipe(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64,
                                                          epochs=1, lr=1e-3, tokenizer="smollm2"))
    out = training.train_model(world_dir, size="proxy_smoltok", out=tmp_path / "m", use_cache=False)
    meta = json.loads((out / "r2f_model.json").read_text())["r2f_model"]
    assert meta["template"] == "chat" and meta["forget"] is None
    assert meta["n_items"] == len(load_split(world_dir, "proxy")) + len(load_split(world_dir, "world_facts"))
    model, tok = load_model(out)
    smol = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2"))
    assert model.config.vocab_size == len(smol) and tok.get_vocab() == smol.get_vocab()
    assert template_for(tok).kind == "chat"


def test_recipe_record_names_a_tokenizer_only_when_the_recipe_has_one():
    """The recipe is hashed into the model cache's key: a recipe without a tokenizer of its own records none, so
    models trained before the field existed (and their hours of fine-tuning) stay in the cache."""
    from r2f.models.ladder import recipe_dict

    assert "tokenizer" not in recipe_dict("small") and "tokenizer" not in recipe_dict("smollm2")
    assert recipe_dict("proxy_smoltok")["tokenizer"] == "smollm2"
