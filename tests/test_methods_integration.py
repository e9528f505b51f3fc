"""Integration: unlearning the trained tiny model really loses the forget answers (slow: trains tiny models)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def _answer_prob(model_dir, items):
    """Mean over items of P̄ = exp(−mean answer-token NLL) (OpenUnlearning's probability metric)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.data.templates import encode_qa
    from r2f.methods.losses import sequence_nll

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    vals = []
    with torch.no_grad():
        for i in range(0, len(items), 16):
            chunk = items[i:i + 16]
            s, n = sequence_nll(model, encode_qa(tok, [it.question for it in chunk], [it.answer for it in chunk]))
            vals.append(torch.exp(-(s / n)))
    return float(torch.cat(vals).mean())


@pytest.mark.parametrize("method,kw,keep", [
    ("grad_diff", {}, 0.3), ("npo", {}, 0.3), ("exact", {}, 0.8), ("r2f", {"decoder": "sigma"}, 0.8)])
def test_unlearned_tiny_model_loses_forget_answers(method, kw, keep, world_dir, tiny_models, tmp_path):
    from r2f.data.loader import load_split
    from r2f.methods import unlearn

    forget, retain = load_split(world_dir, "forget10"), load_split(world_dir, "retain90")
    out = unlearn(str(tiny_models["full"]), world_dir / "forget10.jsonl", world_dir / "retain90.jsonl",
                  method=method, out=tmp_path / method, seed=0, **kw)
    man = json.loads((out / "manifest.json").read_text())
    p_full = _answer_prob(tiny_models["full"], forget)
    p_oracle = _answer_prob(tiny_models["retain"], forget)
    p_after = _answer_prob(out, forget)
    r_full, r_after = _answer_prob(tiny_models["full"], retain[:64]), _answer_prob(out, retain[:64])
    print(method, man["steps"], dict(p_full=p_full, p_oracle=p_oracle, p_after=p_after, r_full=r_full,
                                     r_after=r_after))
    assert p_full > p_oracle  # the world makes forgetting measurable
    # The forget answers lose most of the probability the full model gave them beyond the oracle ...
    assert p_after < p_oracle + 0.5 * (p_full - p_oracle)
    # ... while retain answers keep (for r2f's guarded rule: most of) theirs. Measured on the tiny model:
    # retain P̄ 0.99 -> grad_diff 0.48, npo 0.42, exact 0.92, r2f+sigma 0.92.
    assert r_after > keep * r_full
