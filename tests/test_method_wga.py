"""WGA (r2f.methods.wga): the loss against a hand computation, on toy numbers and on a real batch."""

from __future__ import annotations

import math

import pytest
import torch

from test_methods import tiny_setup  # noqa: F401  (the random tiny Llama and its data files)


def test_wga_loss_on_toy_token_nlls():
    from r2f.methods.wga import wga_loss

    nll = torch.tensor([0.5, 2.0, 1.0, 0.25], requires_grad=True)
    counts = torch.tensor([3, 1])  # two sequences: 3 and 1 answer tokens
    for beta in (1.0, 2.0):
        want = -sum(math.exp(-beta * x) * x for x in (0.5, 2.0, 1.0, 0.25)) / 4
        assert float(wga_loss(nll, counts, beta)) == pytest.approx(want, rel=1e-6)
    # the weight is a constant: ∂/∂NLL_t = −p_t^β / T, not the derivative of p^β·NLL
    nll.grad = None
    wga_loss(nll, counts, 1.0).backward()
    torch.testing.assert_close(nll.grad, -torch.exp(-nll.detach()) / 4)


def test_wga_loss_on_a_real_batch_matches_logits_by_hand(tiny_setup):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.data.loader import load_items
    from r2f.methods import get_method
    from r2f.distributed import ONE_PROCESS
    from r2f.methods.engine import Engine, EngineConfig, StepContext

    model = AutoModelForCausalLM.from_pretrained(tiny_setup["model"])
    tok = AutoTokenizer.from_pretrained(tiny_setup["model"])
    method = get_method("wga")
    assert {k: method.options[k] for k in ("beta", "gamma", "alpha")} == {"beta": 1.0, "gamma": 1.0, "alpha": 1.0}
    engine = Engine(model, tok, load_items(tiny_setup["forget"]), load_items(tiny_setup["retain"]), method,
                    EngineConfig(steps=1, lr=1e-3, batch_size=4), dp=ONE_PROCESS)
    method.setup(engine)
    forget, retain = engine.forget_batch(0), engine.retain_batch(0)
    ctx = StepContext(step=0, total_steps=1, lr=1e-3, seed=0, engine=engine)
    got = float(method.loss(model, forget, retain, ctx))

    def token_nll(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        return -torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)[keep]

    with torch.no_grad():
        f, r = token_nll(forget.inputs), token_nll(retain.inputs)
    want = -(torch.exp(-f) * f).mean() + r.mean()  # γ = α = 1, β = 1
    assert got == pytest.approx(float(want), rel=1e-5)
    assert ctx.signals["forget_nll"] > 0 and ctx.signals["retain_nll"] > 0
