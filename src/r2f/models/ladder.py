"""The model ladder: Llama-shaped configs for ``tiny``, the proxies and ``small``, and the real ``smollm2``.

The proxy is deliberately narrower and shallower than ``small`` (and trained on other authors), so
that a decoder trained on it has to transfer across width, depth and data. Its ladder (``PROXY_SIZES``) adds
members with SmolLM2's widths (``proxy_wide``) and SmolLM2's tokenizer (``proxy_smoltok``), for decoders that must
hold on SmolLM2-sized targets (docs/decoder.md §3.2). ``smollm2`` is not built from
scratch: it fine-tunes the pretrained SmolLM2-135M-Instruct (its own tokenizer and chat template) on the
world, so the demo can also run on a real pretrained model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class Recipe:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    epochs: int
    lr: float
    batch_size: int = 16
    warmup: float = 0.05
    weight_decay: float = 0.0
    base: str | None = None  # a pretrained model to fine-tune (``r2f.models.load_model`` name) instead of a fresh one
    tokenizer: str | None = None  # a fresh model with this pretrained model's tokenizer and prompt template


RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, epochs=40, lr=5e-3),
    "proxy": Recipe(hidden=128, layers=3, heads=4, kv_heads=2, intermediate=256, epochs=40, lr=4e-3),
    # the proxy ladder's wide member: SmolLM2-135M's module shapes (576 → 576/192, 576 ↔ 1536) on two layers,
    # so that a decoder trained on the ladder sees the shape features of targets up to that width
    "proxy_wide": Recipe(hidden=576, layers=2, heads=9, kv_heads=3, intermediate=1536, epochs=40, lr=2e-3),
    # another tokenizer and prompt template (SmolLM2's: a 49k vocabulary, the chat template's longer prompts)
    "proxy_smoltok": Recipe(hidden=192, layers=2, heads=6, kv_heads=2, intermediate=512, epochs=40, lr=3e-3,
                            tokenizer="smollm2"),
    "small": Recipe(hidden=192, layers=4, heads=6, kv_heads=2, intermediate=512, epochs=30, lr=3e-3),
    # shape fields describe the pretrained model; fine-tuning needs far fewer epochs and a small rate
    "smollm2": Recipe(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, epochs=6, lr=2e-4,
                      warmup=0.1, base="smollm2"),
}
SIZES = tuple(RECIPES)
#: the ladder members trained on the proxy author pool (decoder training), never on a target's authors
PROXY_SIZES = ("proxy", "proxy_wide", "proxy_smoltok")


def llama_config(size: str, tokenizer) -> LlamaConfig:
    r = RECIPES[size]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=r.hidden,
        intermediate_size=r.intermediate,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        num_key_value_heads=r.kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )


def build_model(size: str, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised ladder model (deterministic from ``seed``)."""
    if size not in RECIPES or RECIPES[size].base:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(s for s in SIZES if not RECIPES[s].base)}")
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(size, tokenizer))


def recipe_dict(size: str) -> dict:
    """The recipe as recorded (and hashed into the model cache's key). ``tokenizer`` only when set, so that every
    model trained before that field existed keeps its cache key."""
    recipe = asdict(RECIPES[size])
    if recipe["tokenizer"] is None:
        del recipe["tokenizer"]
    return recipe
