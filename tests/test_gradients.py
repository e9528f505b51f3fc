"""Gradient sources: the probe equals a PEFT LoRA adapter, exact gradients, views, stats."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from r2f.gradients import (
    ProbeConfig,
    attach_probe,
    collect_input_stats,
    default_loss,
    exact_gradients,
    probe_factors,
    probe_gradients,
    target_linears,
    weight_matrix,
)


def tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 2, vocab: int = 100, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def random_batch(seed: int = 0, b: int = 3, t: int = 12, vocab: int = 100) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -3:] = 0
    labels = ids.clone()
    labels[:, : t // 2] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_probe_leaves_forward_unchanged_and_restores():
    model = tiny_llama()
    batch = random_batch()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with attach_probe(model, ProbeConfig(rank=4)) as pr:
        assert len(pr.modules) == 2 * 7
        assert all(not p.requires_grad for p in model.parameters())
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all("forward" not in m.__dict__ for _, m in target_linears(model))


def test_factors_deterministic_and_nonzero():
    cfg = ProbeConfig(rank=4, seed=3)
    a1, b1 = probe_factors("model.layers.0.mlp.up_proj", 16, 8, cfg)
    a2, b2 = probe_factors("model.layers.0.mlp.up_proj", 16, 8, cfg)
    a3, _ = probe_factors("model.layers.1.mlp.up_proj", 16, 8, cfg)
    assert a1.shape == (8, 8) and b1.shape == (16, 4)  # r_A = 2 r_B by default
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.equal(a1, a3)
    assert (b1 != 0).all() and (a1 != 0).all()


def assert_probe_matches_peft(model, batch: dict, cfg: ProbeConfig) -> None:
    """The probe's sketches equal the LoRA gradients PEFT computes on ``W − s·B·A`` holding the same factors.

    Independent truth: PEFT's own LoRA layers (for Conv1D weights, PEFT's ``fan_in_fan_out`` path) and autograd.
    Needs ``cfg.rank_a == cfg.rank`` (a LoRA adapter has one rank) and a float64 model.
    """
    peft = pytest.importorskip("peft")
    r, s = cfg.rank, cfg.scale
    sks = {sk.name: sk for sk in probe_gradients(model, [batch], cfg)}
    # PEFT on W - s B A holding the same factors: same outputs, and the LoRA grads must equal the sketches
    ref = copy.deepcopy(model)
    targets = target_linears(ref)
    names = [n for n, _ in targets]
    assert set(names) == set(sks)
    with torch.no_grad():
        for n, mod in targets:
            m, k = weight_matrix(mod).shape
            a, b = probe_factors(n, m, k, cfg)
            weight_matrix(mod).sub_(s * (b.double() @ a.double()))  # a view: Conv1D's weight is stored transposed
    fan_in_fan_out = any(isinstance(mod, Conv1D) for _, mod in targets)
    lcfg = peft.LoraConfig(r=r, lora_alpha=s * r, target_modules=names, lora_dropout=0.0, fan_in_fan_out=fan_in_fan_out)
    pm = peft.get_peft_model(ref, lcfg)
    with torch.no_grad():
        for n in names:
            lin = pm.base_model.model.get_submodule(n)
            m, k = weight_matrix(lin.base_layer).shape
            a, b = probe_factors(n, m, k, cfg)
            assert lin.scaling["default"] == pytest.approx(s)
            lin.lora_A["default"].weight.copy_(a.double())
            lin.lora_B["default"].weight.copy_(b.double())
    loss = default_loss(pm, batch)
    loss.backward()
    assert float(loss) == pytest.approx(float(default_loss(model, batch)), rel=1e-10)
    for n in names:
        lin = pm.base_model.model.get_submodule(n)
        torch.testing.assert_close(sks[n].grad_a.double(), lin.lora_A["default"].weight.grad, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(sks[n].grad_b.double(), lin.lora_B["default"].weight.grad, rtol=1e-5, atol=1e-9)


def test_probe_equals_peft_lora_gradients():
    assert_probe_matches_peft(tiny_llama(), random_batch(), ProbeConfig(rank=4, rank_a=4, seed=1, scale=2.0))


def test_sketches_are_sketches_of_exact_gradient_and_views_mean():
    model = tiny_llama()
    views = [random_batch(0), random_batch(1), random_batch(2)]
    cfg = ProbeConfig(rank=3, seed=0, scale=0.5)
    sks = probe_gradients(model, views, cfg, with_exact=True)
    ex = exact_gradients(model, views)
    assert set(ex) == {sk.param_name for sk in sks}
    for sk in sks:
        g = ex[sk.param_name].double()
        torch.testing.assert_close(sk.exact.double(), g, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(sk.grad_a.double(), cfg.scale * sk.b.double().t() @ g, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(sk.grad_b.double(), cfg.scale * g @ sk.a.double().t(), rtol=1e-5, atol=1e-9)
    # mean of views == gradient of the mean loss
    one = [exact_gradients(model, [v]) for v in views]
    k = sks[0].param_name
    torch.testing.assert_close(ex[k], sum(o[k] for o in one) / 3)
    # momentum aggregation: EMA in order
    mom = exact_gradients(model, views, aggregate="momentum", beta=0.5)
    want = 0.5 * (0.5 * one[0][k] + 0.5 * one[1][k]) + 0.5 * one[2][k]
    torch.testing.assert_close(mom[k], want)


def test_balanced_views_weigh_every_view_alike_in_exact_gradients_and_sketches():
    """``balanced``: the mean of each view's gradient over its own norm — computed here view by view."""
    model = tiny_llama()
    # a view the model scores far worse than the others gets a far larger gradient; balanced undoes that
    views = [random_batch(0), random_batch(1, t=20), random_batch(2, b=1)]
    cfg = ProbeConfig(rank=3, seed=0)

    def loss(model, batch):  # view 2's loss is scaled up 100x: mean aggregation follows it alone
        return default_loss(model, batch) * (100.0 if batch["input_ids"].shape[0] == 1 else 1.0)

    one = [exact_gradients(model, [v], loss) for v in views]
    norms = [sum(g.pow(2).sum() for g in o.values()).sqrt() for o in one]
    bal = exact_gradients(model, views, loss, aggregate="balanced")
    for k in bal:
        torch.testing.assert_close(bal[k], sum(o[k] / n for o, n in zip(one, norms)) / 3)
    # sketches: each view divided by the norm of its own sketches (linear in G, so they track ‖G_v‖)
    per_view = [probe_gradients(model, [v], cfg, loss) for v in views]
    sk_norms = [sum(sk.grad_a.pow(2).sum() + sk.grad_b.pow(2).sum() for sk in pv).sqrt() for pv in per_view]
    sks = probe_gradients(model, views, cfg, loss, aggregate="balanced")
    with_g = probe_gradients(model, views, cfg, loss, aggregate="balanced", with_exact=True)
    for i, sk in enumerate(sks):
        torch.testing.assert_close(with_g[i].grad_a, sk.grad_a)  # computing G alongside changes no sketch
        want_a = sum(pv[i].grad_a / n for pv, n in zip(per_view, sk_norms)) / 3
        want_b = sum(pv[i].grad_b / n for pv, n in zip(per_view, sk_norms)) / 3
        torch.testing.assert_close(sk.grad_a, want_a)
        torch.testing.assert_close(sk.grad_b, want_b)
    # the mean is dominated by the scaled-up view; the balanced direction is not
    mean = exact_gradients(model, views, loss)
    flat = lambda d: torch.cat([g.flatten() for g in d.values()])  # noqa: E731
    cos = lambda a, b: float(a @ b / a.norm() / b.norm())  # noqa: E731
    assert cos(flat(mean), flat(one[2])) > 0.99
    assert cos(flat(bal), flat(one[2])) < 0.9
    with pytest.raises(ValueError, match="mean|balanced|momentum"):
        exact_gradients(model, views, aggregate="median")


def test_collect_input_stats_psd_and_masked():
    model = tiny_llama()
    st = collect_input_stats(model, [random_batch(0), random_batch(1)], ProbeConfig())
    assert st.tokens == 3 * 12 * 2 - 3 * 2
    for name, sig in st.sigma.items():
        assert sig.shape[0] == sig.shape[1]
        assert torch.linalg.eigvalsh(sig.double()).min() > -1e-8


def test_batch_statistic_is_a_times_input_second_moment():
    """A·Σ_x and tr Σ_x recorded by the probe equal those of the layer inputs over every view's real tokens."""
    model = tiny_llama()
    views = [random_batch(0), random_batch(1)]
    cfg = ProbeConfig(rank=2, seed=3)
    inputs: dict[str, list] = {}
    hooks = [mod.register_forward_pre_hook(lambda m, args, n=name: inputs.setdefault(n, []).append(args[0].detach()))
             for name, mod in target_linears(model, cfg.target_modules)]
    for v in views:  # the hooks see plain forwards; the probe replaces forward, so record first
        with torch.no_grad():
            model(input_ids=v["input_ids"], attention_mask=v["attention_mask"])
    for h in hooks:
        h.remove()
    sks = probe_gradients(model, views, cfg, batch_stats=True)
    for sk in sks:
        xs = torch.cat([x.reshape(-1, x.shape[-1])[v["attention_mask"].reshape(-1).bool()]
                        for x, v in zip(inputs[sk.name], views)])
        a = sk.a.double()
        torch.testing.assert_close(sk.a_sigma.double(), a @ (xs.t() @ xs) / xs.shape[0], rtol=1e-5, atol=1e-8)
        assert sk.sigma_trace == pytest.approx(float((xs * xs).sum()) / xs.shape[0], rel=1e-6)


def test_activation_backward_floor_touches_no_weight():
    """The cost floor runs the backward through every layer but computes no parameter gradient."""
    from r2f.gradients import activation_backward

    model = tiny_llama()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []
    hook = model.model.layers[0].self_attn.q_proj.register_full_backward_hook(lambda m, gi, go: seen.append(go[0]))
    activation_backward(model, [random_batch(0), random_batch(1)])
    hook.remove()
    assert len(seen) == 2 and all(g is not None and float(g.abs().sum()) > 0 for g in seen)  # reached layer 0
    assert all(p.grad is None for p in model.parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_projections_reading_one_input_share_one_group_and_unused_outputs_give_zero_sketches():
    """q/k/v (one normed input) and gate/up (another) each form one input group, whose backward shares the
    products with the input; a probed module whose output never reaches the loss gets zero sketches."""
    model = tiny_llama()
    batch = random_batch()
    with attach_probe(model, ProbeConfig(rank=4)) as pr:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        sizes = sorted(len(g.members) for g in pr.groups.values())
        names = sorted(sorted(pm.name.rsplit(".", 1)[1] for pm in g.members) for g in pr.groups.values())
    assert sizes == [1, 1, 1, 1, 2, 2, 3, 3]  # per layer: q|k|v, gate|up, o, down
    assert ["k_proj", "q_proj", "v_proj"] in names and ["gate_proj", "up_proj"] in names

    # the loss ignores layer 1's k_proj output (a hook puts a constant in its place): its sketches are exactly
    # zero, and the other members of its group still get exact sketches of their gradients (v: nonzero)
    k1 = model.model.layers[1].self_attn.k_proj
    handle = k1.register_forward_hook(lambda m, i, out: torch.zeros_like(out))
    try:
        sks = {s.name: s for s in probe_gradients(model, [batch], ProbeConfig(rank=4), with_exact=True)}
    finally:
        handle.remove()
    sk_k = sks["model.layers.1.self_attn.k_proj"]
    assert float(sk_k.grad_a.abs().sum()) == 0 and float(sk_k.grad_b.abs().sum()) == 0
    assert float(sks["model.layers.1.self_attn.v_proj"].exact.abs().sum()) > 0
    for name in ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"):
        sk = sks[name]
        g = sk.exact.double()
        torch.testing.assert_close(sk.grad_a.double(), sk.scale * sk.b.double().t() @ g, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(sk.grad_b.double(), sk.scale * g @ sk.a.double().t(), rtol=1e-5, atol=1e-9)


def test_measure_cost_reports_the_floor_next_to_probe_and_exact():
    """``r2f fidelity``'s cost block: probe_s, exact_s, floor_s (forward + activation backward) and the probe's
    work above the floor in units of exact gradients, (probe_s - floor_s) / exact_s."""
    from r2f.decoders.fidelity import measure_cost

    model = tiny_llama(dtype=torch.float32)
    cost = measure_cost(model, [random_batch(0), random_batch(1)], ProbeConfig(rank=4), None, repeats=1)
    assert all(cost[k] > 0 for k in ("probe_s", "exact_s", "floor_s", "forward_s"))
    # (the times are rounded to 10 µs, a visible fraction of this tiny model's milliseconds)
    tol = 3e-5 / cost["exact_s"] + 1e-4
    assert cost["probe_extra_over_exact"] == pytest.approx((cost["probe_s"] - cost["floor_s"]) / cost["exact_s"],
                                                           abs=tol)
    assert cost["floor_over_exact"] == pytest.approx(cost["floor_s"] / cost["exact_s"], abs=tol)
