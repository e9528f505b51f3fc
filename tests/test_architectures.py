"""The architecture matrix: every supported family, random-init and tiny, through the probe, R2F and the baselines.

For each family: the default probe pattern finds exactly the attention and MLP projections (docs/architectures.md
lists them), the probe's sketches equal PEFT's LoRA gradients, one step of R2F and of every baseline changes the
weights, and a decoder trained on the Llama-shaped world proxy decodes on the family's modules. GPT-2's ``Conv1D``
stores its weight transposed: the probe, the decoded directions and the update must all respect that.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import transformers
from safetensors.torch import load_file

from r2f.errors import R2FInputError
from r2f.gradients import ProbeConfig, collect_input_stats, module_kind, target_linears, weight_matrix
from r2f.methods import METHODS
from test_gradients import assert_probe_matches_peft, random_batch, tiny_llama

HIDDEN, LAYERS = 32, 2

LLAMA_NAMES = [("self_attn.q_proj", "q_proj"), ("self_attn.k_proj", "k_proj"), ("self_attn.v_proj", "v_proj"),
               ("self_attn.o_proj", "o_proj"), ("mlp.gate_proj", "gate_proj"), ("mlp.up_proj", "up_proj"),
               ("mlp.down_proj", "down_proj")]
NEOX_NAMES = [("attention.query_key_value", "q_proj"), ("attention.dense", "o_proj"),
              ("mlp.dense_h_to_4h", "up_proj"), ("mlp.dense_4h_to_h", "down_proj")]

#: family -> (config class, its size arguments, the default-probed modules of one block as (suffix, kind)).
#: The expected modules are written out by hand from each family's modelling code (the independent truth).
FAMILIES: dict[str, tuple[str, dict, list[tuple[str, str]]]] = {
    "llama": ("LlamaConfig", {"num_key_value_heads": 2}, LLAMA_NAMES),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}, LLAMA_NAMES),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2}, LLAMA_NAMES),
    "gemma": ("GemmaConfig", {"num_key_value_heads": 2, "head_dim": 8}, LLAMA_NAMES),
    "gemma2": ("Gemma2Config", {"num_key_value_heads": 2, "head_dim": 8}, LLAMA_NAMES),
    "phi3": ("Phi3Config", {"num_key_value_heads": 2},
             [("self_attn.qkv_proj", "q_proj"), ("self_attn.o_proj", "o_proj"), ("mlp.gate_up_proj", "up_proj"),
              ("mlp.down_proj", "down_proj")]),
    "gpt_neox": ("GPTNeoXConfig", {}, NEOX_NAMES),
    "falcon": ("FalconConfig", {"ffn_hidden_size": 2 * HIDDEN},
               [("self_attention.query_key_value", "q_proj"), ("self_attention.dense", "o_proj"),
                ("mlp.dense_h_to_4h", "up_proj"), ("mlp.dense_4h_to_h", "down_proj")]),
    "opt": ("OPTConfig", {"ffn_dim": 2 * HIDDEN, "word_embed_proj_dim": HIDDEN},
            [("self_attn.q_proj", "q_proj"), ("self_attn.k_proj", "k_proj"), ("self_attn.v_proj", "v_proj"),
             ("self_attn.out_proj", "o_proj"), ("fc1", "up_proj"), ("fc2", "down_proj")]),
    "gpt2": ("GPT2Config", {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4, "n_inner": 2 * HIDDEN,
                            "n_positions": 256},
             [("attn.c_attn", "q_proj"), ("attn.c_proj", "o_proj"), ("mlp.c_fc", "up_proj"),
              ("mlp.c_proj", "down_proj")]),
}
#: every registered method that trains with an optimizer instead of decoding gradients (read from the registry's
#: capabilities, so a new method file is run here too)
BASELINES = [name for name, cls in METHODS.items() if not cls.uses_decoder]


def build(family: str, vocab: int, *, pad: int = 0, bos: int = 1, eos: int = 2, dtype=torch.float32, seed: int = 0):
    """A random-init tiny causal LM of ``family`` (no download: built from its config)."""
    cls, sizes, _ = FAMILIES[family]
    kw = {"vocab_size": vocab, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
          "intermediate_size": 2 * HIDDEN, "max_position_embeddings": 256, "pad_token_id": pad,
          "bos_token_id": bos, "eos_token_id": eos, **sizes}
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kw)).to(dtype).eval()


def block_modules(names: list[str]) -> set[tuple[int, str]]:
    """{(layer index, name inside the block)} of qualified module names."""
    out = set()
    for n in names:
        m = re.fullmatch(r".*?\.(\d+)\.(.+)", n)
        assert m, f"{n} is not inside a numbered block"
        out.add((int(m.group(1)), m.group(2)))
    return out


# ------------------------------------------------------------------------ (a) default target modules, kinds


@pytest.mark.parametrize("family", FAMILIES)
def test_default_pattern_finds_every_projection_and_its_role(family):
    model = build(family, 128)
    found = target_linears(model)
    expected = FAMILIES[family][2]
    assert block_modules([n for n, _ in found]) == {(i, s) for i in range(LAYERS) for s, _ in expected}
    kinds = dict(expected)
    for name, mod in found:
        assert module_kind(name) == kinds[re.fullmatch(r".*?\.\d+\.(.+)", name).group(1)], name
        m, n = weight_matrix(mod).shape  # (out × in) whatever the storage: the layer maps n inputs to m outputs
        x = torch.randn(3, n)
        with torch.no_grad():
            want = x @ weight_matrix(mod).t() + (mod.bias if mod.bias is not None else 0)
            torch.testing.assert_close(mod(x), want)
        assert m == want.shape[-1]


# ------------------------------------------------------------------------ (b) probe == PEFT LoRA gradients


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_equals_peft_lora_gradients(family):
    assert_probe_matches_peft(build(family, 128, dtype=torch.float64), random_batch(vocab=128),
                              ProbeConfig(rank=4, rank_a=4, seed=1, scale=2.0))


def test_conv1d_decoded_gradients_are_exact_in_the_weights_layout():
    """A probe whose A has full column rank observes G completely (P_A = I), so the ``ls`` decoder returns the exact
    gradient: the decoded directions of GPT-2's Conv1D weights equal autograd's gradients of those parameters,
    in their (in × out) layout. The attention output c_proj is square: a transposed direction would not fail on
    shape there, only on value (relative error ~1)."""
    from r2f.decoders import decoded_gradients
    from r2f.decoders.base import LSDecoder
    from r2f.gradients import default_loss

    model = build("gpt2", 128, dtype=torch.float64)
    batch = random_batch(vocab=128)
    probe = ProbeConfig(rank=4, rank_a=4 * HIDDEN, seed=2)  # r_A ≥ every n (c_fc reads 32, mlp.c_proj 128)
    got = decoded_gradients(model, [batch], LSDecoder(torch.float64), probe)
    ref = copy.deepcopy(model)
    default_loss(ref, batch).backward()
    params = dict(ref.named_parameters())
    assert set(got) == {f"{n}.weight" for n, _ in target_linears(model)}
    for name, g in got.items():
        assert g.shape == params[name].shape
        want = params[name].grad
        # sketches are accumulated in float32 and the least-squares solve amplifies their rounding by A's condition
        # number (6e-05 on an Intel Xeon, < 1e-05 on an AMD EPYC); a wrong layout is off by ~1
        assert float((g - want).norm() / want.norm()) < 1e-3, name


# ------------------------------------------------------------------------ unsupported layers


class PackedProjection(nn.Module):
    """A projection of a type the probe does not know (stands for custom fused or quantised layers)."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(inner.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


def test_unsupported_layer_type_is_bad_input_naming_the_type(tmp_path):
    import r2f

    model = tiny_llama(dtype=torch.float32)
    attn = model.model.layers[1].self_attn
    attn.q_proj = PackedProjection(attn.q_proj)
    with pytest.raises(R2FInputError, match=r"model\.layers\.1\.self_attn\.q_proj is a .*PackedProjection"):
        target_linears(model)
    with pytest.raises(R2FInputError, match=r"model\.embed_tokens is a torch\.nn\.modules\.sparse\.Embedding"):
        target_linears(tiny_llama(), r"embed_tokens|q_proj")
    # norms (1-D weights) and containers matched by a broad pattern are skipped, not refused
    assert len(target_linears(tiny_llama(), r"layers\.0")) == 7
    # the unlearning run refuses it before any step (the CLI turns this into exit 2 with this one line)
    tok = _tokenizer(["What is x? It is y."])
    items = [{"question": "What is x?", "answer": "It is y."}]
    with pytest.raises(R2FInputError, match="PackedProjection") as info:
        r2f.unlearn(model, items, items, method="r2f", decoder="ls", tokenizer=tok, steps=1, out=tmp_path / "u")
    assert "\n" not in str(info.value) and "--option target_modules" in str(info.value)


def _tokenizer(texts: list[str]):
    from r2f.models.tokenizer import train_tokenizer

    return train_tokenizer(texts, vocab_size=300)


# ------------------------------------------------------------------------ (c), (d): the world proxy's decoder


@pytest.fixture(scope="module")
def world_setup(world_dir, tmp_path_factory):
    """The world's tokenizer and items, and a learned decoder trained on a random-init ``proxy``-shaped Llama.

    Tiny budget (the point is that it runs on other families, not its fidelity); trained without ``out`` and
    saved by hand, so the default-decoder pointer of any cache is never moved; the cache is this module's own.
    """
    from r2f.data.loader import load_split
    from r2f.data.world import world_corpus
    from r2f.decoders.train import train_decoder
    from r2f.models.ladder import build_model
    from r2f.models.tokenizer import train_tokenizer
    from r2f.models.training import TOKENIZER_VOCAB
    from r2f.threads import torch_threads

    root = tmp_path_factory.mktemp("architectures")
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setenv("R2F_CACHE", str(root / "cache"))
        tok = train_tokenizer(world_corpus(world_dir), TOKENIZER_VOCAB)
        proxy = build_model("proxy", tok, seed=0).eval()
        dec = train_decoder((proxy, tok), world_dir, rank=4, views=2, batch_items=4, probe_seeds=1, max_items=8,
                            steps=40, long_answers=False)
        path = dec.save(root / "decoder.safetensors")
    assert not (root / "cache" / "decoders" / "default.json").exists()
    return {"tok": tok, "decoder": path, "root": root,
            "forget": load_split(world_dir, "forget10")[:4], "retain": load_split(world_dir, "retain90")[:8]}


def world_model(family: str, tok):
    return build(family, len(tok), pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id)


@pytest.mark.parametrize("family", FAMILIES)
def test_world_proxy_decoder_decodes_on_family(family, world_setup):
    from r2f.data.templates import encode_qa
    from r2f.decoders import decoded_gradients, load_decoder

    tok = world_setup["tok"]
    model = world_model(family, tok)
    dec = load_decoder(world_setup["decoder"])
    probe = ProbeConfig(**{k: dec.meta["probe"][k] for k in ("rank", "rank_a", "target_modules", "scale")})
    items = world_setup["forget"]
    views = [encode_qa(tok, [it.views(2)[v] for it in items], [it.answer for it in items]) for v in range(2)]
    facts = world_setup["retain"]
    stats = collect_input_stats(model, [encode_qa(tok, [it.question for it in facts], [it.answer for it in facts])],
                                probe, source="retain")
    got = decoded_gradients(model, views, dec, probe, stats=stats)
    params = dict(model.named_parameters())
    assert set(got) == {f"{n}.weight" for n, _ in target_linears(model)}
    for name, g in got.items():
        assert g.shape == params[name].shape, name
        assert bool(torch.isfinite(g).all()) and float(g.norm()) > 0, name


def changed_tensors(before: dict[str, torch.Tensor], out: Path) -> set[str]:
    """Names of the saved tensors that differ from ``before`` (read back from the written safetensors)."""
    after = load_file(str(out / "model.safetensors"))
    return {n for n, t in after.items() if n in before and not torch.equal(t, before[n])}


def after_module(model: nn.Module, module: nn.Module, batch: dict) -> set[str]:
    """Names of the parameters of the modules a forward pass runs after ``module`` has returned (nothing before
    it reads them, so nothing steered at its output can train them): read from the pass's order, not declared."""
    order: list[str] = []
    named = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(named[mod])) for m in named]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    done = order.index(named[module])
    early = set(order[:done + 1])
    return {f"{n}.{p}" for n in order[done + 1:] if n not in early and not any(n.startswith(e + ".") for e in early)
            for p, _ in dict(model.named_modules())[n].named_parameters(recurse=False)}


@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_of_r2f_and_every_baseline_changes_the_weights(family, world_setup):
    """One step of each method changes exactly the tensors it trains: R2F and the LoRA baseline the probed
    projections (all of them), a full-weight AdamW method every tensor (weight decay moves even unused rows),
    RMU steering the last layer everything but what runs after that layer (the final norm, an untied head)."""
    import r2f
    from r2f.data.templates import encode_qa
    from r2f.fsdp import decoder_layers

    tok = world_setup["tok"]
    model = world_model(family, tok)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    probed = {f"{n}.weight" for n, _ in target_linears(model)}
    kw = {"tokenizer": tok, "steps": 1, "batch_size": 4}
    out = world_setup["root"] / family
    # R2F with the proxy's learned decoder; the step schedule applies a step whatever the line search would say
    r2f.unlearn(model, world_setup["forget"], world_setup["retain"], method="r2f", decoder=world_setup["decoder"],
                out=out / "r2f", views=2, stop="none", step_rule="schedule", stats_items=8, guard_items=8, **kw)
    changed = changed_tensors(before, out / "r2f")
    assert changed == probed  # R2F changes every probed projection and nothing else
    last = decoder_layers(model)[-1]
    last_name = next(n for n, m in model.named_modules() if m is last)
    items = world_setup["forget"]
    downstream = after_module(model, last, dict(encode_qa(tok, [it.question for it in items], [it.answer for it in items])))
    assert downstream and not downstream & probed  # e.g. the final norm: the check below can fail
    for method in BASELINES:
        options = {"module_regex": re.escape(last_name)} if method == "rmu" else {}
        r2f.unlearn(model, world_setup["forget"], world_setup["retain"], method=method, out=out / method, **kw,
                    **options)
        saved = {n for n in load_file(str(out / method / "model.safetensors")) if n in before}
        expected = {"lora": probed, "rmu": saved - downstream}.get(method, saved)
        assert changed_tensors(before, out / method) == expected, method
