"""Decoders: consistency, exactness, the engine API, learned-decoder training and file round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from r2f.decoders import decoded_gradients, load_decoder
from r2f.decoders.algebra import ModuleAlgebra
from r2f.decoders.learned import LearnedDecoder
from r2f.decoders.train import fit_coefnet, scalar_fidelity
from r2f.errors import R2FInputError
from r2f.gradients import ProbeConfig, Sketches, exact_gradients, probe_factors, probe_gradients

from test_gradients import random_batch, tiny_llama


def synthetic_sketch(m=40, n=24, rank=None, r_b=4, r_a=8, s=1.5, seed=0, dtype=torch.float64) -> Sketches:
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        G = torch.randn(m, n, generator=g, dtype=dtype)
    else:
        G = torch.randn(m, rank, generator=g, dtype=dtype) @ torch.randn(rank, n, generator=g, dtype=dtype)
    cfg = ProbeConfig(rank=r_b, rank_a=r_a, seed=seed, scale=s)
    a, b = probe_factors("layer.q_proj", m, n, cfg)
    a, b = a.to(dtype), b.to(dtype)
    x = torch.randn(200, n, generator=g, dtype=dtype)
    return Sketches(
        name="model.layers.0.self_attn.q_proj", kind="q_proj", depth=0.0, a=a, b=b, scale=s,
        grad_a=s * b.t() @ G, grad_b=s * G @ a.t(), exact=G,
        a_sigma=(a @ x.t()) @ x / 200, sigma_trace=float((x * x).sum()) / 200,
    )


def residuals(sk: Sketches, gh: torch.Tensor) -> tuple[float, float]:
    s, gh = sk.scale, gh.double()
    b, a, ga, gb = (t.double() for t in (sk.b, sk.a, sk.grad_a, sk.grad_b))
    ra = (s * b.t() @ gh - ga).norm() / ga.norm()
    rb = (s * gh @ a.t() - gb).norm() / gb.norm()
    return float(ra), float(rb)


def cos(x, y) -> float:
    return float((x * y).sum() / (x.norm() * y.norm()))


@pytest.mark.parametrize("name", ["ls", "sketch", "sketch_row", "sigma"])
@pytest.mark.parametrize("rank", [None, 3])
def test_consistent_decoders_reproduce_both_sketches(name, rank):
    sk = synthetic_sketch(rank=rank)
    dec = load_decoder(name)
    dec.dtype = torch.float64
    ra, rb = residuals(sk, dec.decode(sk))
    assert ra <= 1e-4 and rb <= 1e-4


def test_ls_is_projection():
    sk = synthetic_sketch()
    dec = load_decoder("ls")
    dec.dtype = torch.float64
    gh = dec.decode(sk)
    G = sk.exact
    # cos(Ĝ_LS, G) = ‖Ĝ_LS‖/‖G‖ for an orthogonal projection
    assert cos(gh, G) == pytest.approx(float(gh.norm() / G.norm()), rel=1e-8)
    alg = ModuleAlgebra(sk, torch.float64)
    assert float(alg.unobserved(gh).norm()) < 1e-9 * float(gh.norm())


@pytest.mark.parametrize("name", ["sketch", "sketch_row"])
def test_sketch_exact_when_low_rank(name):
    sk = synthetic_sketch(rank=3)  # rank(G)=3 <= r_B=4 < r_A=8
    dec = load_decoder(name)
    dec.dtype = torch.float64
    gh = dec.decode(sk)
    assert float((gh - sk.exact).norm() / sk.exact.norm()) < 1e-8


def test_lora_decoder_formula():
    sk = synthetic_sketch()
    gh = load_decoder("lora").decode(sk)
    want = sk.scale * (sk.b @ sk.grad_a + sk.grad_b @ sk.a)
    torch.testing.assert_close(gh.double(), want, rtol=1e-5, atol=1e-6)


def autograd_mean_answer_nll_grads(model, views: list[dict]) -> dict[str, torch.Tensor]:
    """∂/∂W of mean over views of mean over sequences of the mean answer-token NLL, for every Linear weight of
    the decoder layers, written out from the logits and plain autograd (nothing of r2f's)."""
    weights = {n: p for n, p in model.named_parameters() if ".layers." in n and n.endswith("proj.weight")}
    total = 0.0
    for b in views:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        labels = b["labels"][:, 1:]
        mask = labels != -100
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        total = total + (-(logp * mask).sum(1) / mask.sum(1)).mean() / len(views)
    return dict(zip(weights, torch.autograd.grad(total, list(weights.values()))))


def test_exact_decoder_and_decoded_gradients_api():
    model = tiny_llama()  # float64: the comparison with autograd is to rounding
    views = [random_batch(0), random_batch(1)]
    probe = ProbeConfig(rank=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = autograd_mean_answer_nll_grads(model, views)
    assert len(want) == 14  # 2 layers × q, k, v, o, gate, up, down
    ex = exact_gradients(model, views)
    got = decoded_gradients(model, views, "exact", probe, None)
    assert set(got) == set(ex) == set(want)
    for k in want:  # the exact decoder's direction is autograd's gradient itself, not only parallel to it
        # (decoded directions are float32: equal to float32 rounding)
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-4, atol=1e-6 * float(want[k].abs().max()))
    sk = decoded_gradients(model, views, load_decoder("sketch"), probe, None, aggregate="momentum")
    assert set(sk) == set(ex)
    assert all(sk[k].shape == ex[k].shape for k in ex)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_learned_decoder_trains_roundtrips_and_refuses_other_probe(tmp_path):
    model = tiny_llama(dtype=torch.float32)
    probe = ProbeConfig(rank=4)
    parts = []
    for i in range(2):
        sks = probe_gradients(model, [random_batch(10 * i + v) for v in range(2)], ProbeConfig(rank=4, seed=i), with_exact=True)
        from r2f.decoders.train import training_scalars

        parts.append(training_scalars(sks, access="lora"))
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    assert set(scalar_fidelity(None, data, access="lora")) == {"ls", "sketch_row", "sketch_col"}
    net, losses = fit_coefnet(data, steps=150, hidden=16)
    assert losses[-1] < losses[0] - 1e-3
    fid = scalar_fidelity(net, data, access="lora")
    assert fid["learned"] > fid["ls"]
    meta = {"probe": probe.to_dict(), "bases": None, "access": "lora",
            "module_kinds": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    from r2f.decoders.learned import BASES, N_FEATURES

    meta.update(bases=[b[0] for b in BASES], n_features=N_FEATURES, proxy={"name": "random"})
    dec = LearnedDecoder(net, meta)
    path = dec.save(tmp_path / "dec.safetensors")
    assert json.loads((tmp_path / "dec.safetensors.json").read_text())["format_version"] == 1
    back = load_decoder(str(path))
    sk = probe_gradients(model, [random_batch(99)], probe, with_exact=True, batch_stats=True)[0]
    torch.testing.assert_close(back.decode(sk), dec.decode(sk))
    # consistency holds for the learned decoder too
    ra, rb = residuals(sk, back.decode(sk).double())
    assert ra < 1e-3 and rb < 1e-3
    # the batched path (one stack per shape group, what the engine uses) equals decoding module by module
    sks = probe_gradients(model, [random_batch(98), random_batch(97)], probe, batch_stats=True)
    assert len({(tuple(s.a.shape), tuple(s.b.shape)) for s in sks}) < len(sks)  # some groups hold several
    many = {s.name: g for s, g in back.decode_many(sks)}
    assert set(many) == {s.name for s in sks}
    for s in sks:
        torch.testing.assert_close(many[s.name], back.decode(s), rtol=1e-4, atol=1e-7)
    # used by the engine with the matching probe
    got = decoded_gradients(model, [random_batch(1)], back, probe, None)
    assert len(got) == 14
    # refused with another probe rank / r_A
    with pytest.raises(R2FInputError, match="rank"):
        decoded_gradients(model, [random_batch(1)], back, ProbeConfig(rank=8), None)
    with pytest.raises(R2FInputError, match="rank_a"):
        back.check_compatible(ProbeConfig(rank=4, rank_a=4))
    with pytest.raises(R2FInputError, match="module kinds"):
        back.check_compatible(probe, {"q_proj", "c_attn"})


def test_a_learned_decoder_beats_the_untrained_network_on_held_out_pairs():
    """Trained on some batches and probe seeds, the correction must help on batches and a probe seed it never saw:
    decoded in full (not through the training scalars) it is closer to autograd's gradient than the untrained
    network (zero output: exactly the closed form it corrects) and than a random, untrained one."""
    from r2f.decoders.learned import CoefNet, J, N_FEATURES
    from r2f.decoders.train import _cat, best_closed_form, training_scalars

    model = tiny_llama(dtype=torch.float32)

    def sketches(batch_seeds, probe_seed):
        return [sk for b in batch_seeds for sk in probe_gradients(
            model, [random_batch(10 * b + v) for v in range(2)], ProbeConfig(rank=4, seed=probe_seed),
            with_exact=True)]

    train = _cat([training_scalars(sketches([b], ps), access="lora") for ps in (0, 1) for b in range(6)])
    held = sketches(range(50, 53), 7)
    base = best_closed_form(train, "lora")
    net, _ = fit_coefnet(train, steps=300, hidden=16, base=base)
    zero = CoefNet(N_FEATURES, 16, J)
    zero.load_state_dict(net.state_dict())
    rand = CoefNet(N_FEATURES, 16, J)
    rand.load_state_dict(net.state_dict())
    with torch.no_grad():
        zero.net[-1].weight.zero_()
        zero.net[-1].bias.zero_()
        torch.manual_seed(3)
        rand.net[-1].weight.normal_(0, 0.5)
    meta = {"access": "lora", "base": base}

    def held_cos(n) -> float:
        dec = LearnedDecoder(n, meta)
        return sum(cos(dec.decode(sk).double(), sk.exact.double()) for sk in held) / len(held)

    learned, untrained, random_net = held_cos(net), held_cos(zero), held_cos(rand)
    assert learned > untrained + 0.03 and learned > random_net + 0.03, (learned, untrained, random_net)
    # the untrained decoder is the closed form it corrects
    want = sum(cos(load_decoder(base).decode(sk).double(), sk.exact.double()) for sk in held) / len(held)
    assert untrained == pytest.approx(want, abs=1e-4)


def test_learned_by_name_is_the_last_trained_decoder(tmp_path, monkeypatch):
    from r2f.decoders.api import set_default_decoder

    monkeypatch.setenv("R2F_CACHE", str(tmp_path / "cache"))
    with pytest.raises(R2FInputError, match="train-decoder"):
        load_decoder("learned")
    from r2f.decoders.learned import BASES, N_FEATURES, CoefNet, J

    meta = {"probe": ProbeConfig(rank=4).to_dict(), "bases": [b[0] for b in BASES], "n_features": N_FEATURES,
            "module_kinds": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "proxy": {"name": "random"}}
    path = LearnedDecoder(CoefNet(N_FEATURES, 8, J), meta).save(tmp_path / "d.safetensors")
    set_default_decoder(path)
    assert isinstance(load_decoder("learned"), LearnedDecoder)
    path.unlink()
    with pytest.raises(R2FInputError, match="no longer exists"):
        load_decoder("learned")


def test_load_decoder_rejects_garbage(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(R2FInputError):
        load_decoder(str(bad))
    with pytest.raises(R2FInputError):
        load_decoder("no-such-decoder")


def test_access_modes_limit_candidates_and_refuse_missing_inputs():
    """A decoder reads only what its mode provides; used without those inputs it is refused, never fed a sentinel."""
    from r2f.decoders.learned import BASES, ACCESS_MODES, allowed_bases, closed_form_candidate, module_bases

    assert ACCESS_MODES == ("lora", "stats", "batch")
    names = [b[0] for b in BASES]
    assert [n for n, ok in zip(names, allowed_bases("lora")) if ok] == ["sketch_row", "sketch_col"]
    assert "sigma_gen" in [n for n, ok in zip(names, allowed_bases("stats")) if ok]
    assert "sigma_batch" not in [n for n, ok in zip(names, allowed_bases("stats")) if ok]
    assert all(allowed_bases("batch"))
    with pytest.raises(R2FInputError, match="access mode"):
        allowed_bases("white-box")
    sk = synthetic_sketch()
    mb = module_bases(sk, None, torch.float64, access="lora")
    assert [v is None for v in mb.vs] == [False, False] + [True] * (len(BASES) - 2)
    # the candidate of a mode, alone, is the completed closed form: sketch_row equals the built-in decoder
    torch.testing.assert_close(closed_form_candidate("sketch_row").decode(sk).double(),
                               load_decoder("sketch_row").decode(sk).double(), rtol=1e-4, atol=1e-6)
    # a batch-mode candidate without generic statistics, or without the batch's own statistic: refused
    with pytest.raises(R2FInputError, match="access mode 'stats' needs forward statistics"):
        closed_form_candidate("sigma_gen").decode(sk, None)
    import dataclasses

    no_batch = dataclasses.replace(sk, a_sigma=None)
    with pytest.raises(R2FInputError, match="access mode 'batch' needs the batch's own"):
        closed_form_candidate("sigma_batch").decode(no_batch, {"unused": None})


def test_train_decoder_lora_mode_corrects_the_best_closed_form(tiny_models, world_dir, tmp_path):
    """Trained in lora mode on the proxy: records its mode and base (the mode's best closed form on the training
    pairs), needs no Σ, and either keeps a trained (non-zero) correction that does not lose to its base on the
    proxy's held-out pairs, or says it dropped it and is then exactly that closed form (a zero network)."""
    from r2f.decoders import train_decoder

    dec = train_decoder(str(tiny_models["proxy"]), world_dir, rank=4, out=tmp_path / "lora.safetensors",
                        steps=60, probe_seeds=1, max_items=16, access="lora")
    loaded = load_decoder(str(tmp_path / "lora.safetensors"))
    meta = loaded.meta
    closed = ("ls", "sketch_row", "sketch_col")
    assert meta["access"] == "lora" and meta["base"] == max(closed, key=lambda n: meta["fidelity_train"][n])
    held = meta["fidelity_heldout"]
    assert set(held) == {*closed, "learned"}
    last = loaded.net.net[-1]
    zero = not (bool(last.weight.any()) or bool(last.bias.any()))
    if meta["correction"] == "kept":
        assert not zero and held["learned"] >= held[meta["base"]] - 1e-6
    else:
        assert meta["correction"].startswith("dropped") and zero
        assert held["learned"] == pytest.approx(held[meta["base"]], abs=1e-9)
    model = tiny_llama(dtype=torch.float32)
    got = decoded_gradients(model, [random_batch(3)], dec, ProbeConfig(rank=4), None)  # no stats: fine
    assert got and all(torch.isfinite(g).all() for g in got.values())


def test_group_weights_make_the_loss_a_mean_of_group_means():
    from r2f.decoders.train import group_weights

    group = torch.tensor([3, 3, 3, 0, 5, 5])
    loss = torch.tensor([1.0, 2.0, 3.0, 10.0, 4.0, 6.0])
    # groups 3, 0, 5: means 2, 10, 5 -> 17 / 3
    assert float((group_weights(group) * loss).sum()) == pytest.approx(17.0 / 3.0)


def test_label_groups_marks_each_members_short_and_long_answer_batches():
    from r2f.decoders.train import label_groups

    # 10 items, the first 6 short: batches of 4 are [0-3] short, [4-7] and [8-9] long; two probe seeds
    parts = [{"features": torch.zeros(n, 2)} for n in (2, 3, 1, 2, 3, 1)]
    label_groups(parts, member=2, n_items=10, n_short=6, batch_items=4)
    assert [p["group"].tolist() for p in parts] == [[4, 4], [5, 5, 5], [5], [4, 4], [5, 5, 5], [5]]


def test_a_grouped_fit_weighs_every_group_alike_whatever_its_size():
    """Nine modules want the candidate's coefficient at +1, one wants it at −1 (features alike, so the network
    gives one coefficient to all): pooled, the nine win; grouped, the two groups pull equally and meet near 0."""
    from r2f.decoders.learned import J, N_FEATURES
    from r2f.decoders.train import fit_coefnet

    n = 10
    beta = torch.zeros(n, J, dtype=torch.float64)
    beta[:9, 0], beta[9, 0] = 1.0, -1.0
    mask = torch.zeros(n, J, dtype=torch.float64)
    mask[:, 0] = 1.0
    data = {"features": torch.zeros(n, N_FEATURES), "beta": beta, "gram": torch.eye(J, dtype=torch.float64).expand(n, J, J),
            "gamma": torch.full((n,), 2.0, dtype=torch.float64), "mask": mask}
    feats = torch.zeros(1, N_FEATURES)
    pooled, _ = fit_coefnet(data, steps=300, lr=1e-2, weight_decay=0.0)
    grouped, _ = fit_coefnet(data | {"group": torch.tensor([0] * 9 + [1])}, steps=300, lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        c_pooled, c_grouped = float(pooled(feats)[0, 0]), float(grouped(feats)[0, 0])
    # pooled: maximise (10 + 8c)/√(1 + c²), optimum c = 0.8; grouped: maximise 1/√(1 + c²), optimum c = 0
    assert c_pooled > 0.5
    assert abs(c_grouped) < 0.1


def test_best_mix_cosine_is_the_cosine_of_the_projection_onto_the_candidates_span():
    """Explicit vectors: Ĝ_LS = e1, candidate blocks orthogonal to it, G = e1 + the rest. The best mix of the
    available candidates is G's projection onto span(e1, their blocks), so its cos is ‖PG‖/‖G‖."""
    from r2f.decoders.learned import J, cosine_from_scalars
    from r2f.decoders.train import best_mix_cosine

    gen = torch.Generator().manual_seed(0)
    d, n_mod = 12, 5
    rows: dict[str, list] = {k: [] for k in ("beta", "gram", "gamma", "mask")}
    want = []
    for i in range(n_mod):
        h = torch.randn(d, J, generator=gen, dtype=torch.float64)
        h[0] = 0.0  # orthogonal to Ĝ_LS = e1
        h = h / h.norm(dim=0)
        g = torch.randn(d, generator=gen, dtype=torch.float64)
        g[0] = 1.0  # ⟨Ĝ_LS, G⟩ = ‖Ĝ_LS‖² = 1
        mask = (torch.rand(J, generator=gen) < 0.6).double()
        mask[i % J] = 1.0
        span = torch.cat([torch.eye(d, dtype=torch.float64)[:, :1], h[:, mask.bool()]], 1)
        coef = torch.linalg.lstsq(span, g[:, None]).solution[:, 0]
        want.append(float((span @ coef).norm() / g.norm()))
        c_star = torch.zeros(J, dtype=torch.float64)
        c_star[mask.bool()] = coef[1:]  # the projection's own mix: the bound is attained
        rows.setdefault("c_star", []).append(c_star)
        rows["beta"].append(h.T @ g)
        rows["gram"].append(h.T @ h)
        rows["gamma"].append(g.norm())
        rows["mask"].append(mask)
    c_star = torch.stack(rows.pop("c_star"))
    data = {k: torch.stack(v) for k, v in rows.items()}
    best = best_mix_cosine(data)
    assert best.tolist() == pytest.approx(want, rel=1e-9)
    args = (data["beta"], data["gram"], data["gamma"], data["mask"])
    assert cosine_from_scalars(c_star, *args).tolist() == pytest.approx(want, rel=1e-9)
    # and no other mix of the candidates does better
    trials = torch.randn(2000, n_mod, J, generator=gen, dtype=torch.float64) * 2
    assert bool((torch.stack([cosine_from_scalars(c, *args) for c in trials]) <= best + 1e-12).all())


def test_train_decoder_on_a_ladder_pools_the_pairs_of_every_proxy_shape(tiny_models, world_dir, tmp_path):
    """A ladder (two proxies of other widths and depths) gives pairs from each member on the same author split:
    the training set holds both members' modules, both shapes' features, and the file names both members."""
    from r2f.decoders import train_decoder
    from r2f.decoders.train import as_ladder
    from r2f.models.loading import model_fingerprint

    narrow, wide = str(tiny_models["full"]), str(tiny_models["proxy"])  # tiny (64 × 2 layers), proxy (128 × 3)
    kw = dict(rank=4, steps=20, probe_seeds=1, max_items=8, access="lora")
    one = train_decoder(wide, world_dir, **kw)
    both = train_decoder([narrow, wide], world_dir, out=tmp_path / "ladder.safetensors", **kw)
    meta = load_decoder(str(tmp_path / "ladder.safetensors")).meta
    assert [m["fingerprint"] for m in meta["ladder"]] == [model_fingerprint(narrow), model_fingerprint(wide)]
    assert meta["proxy"] == meta["ladder"][0]
    # the same jobs (items × probe seeds) on each member: modules per job scale with the member's layer count
    layers = {p: json.loads((Path(p) / "config.json").read_text())["num_hidden_layers"] for p in (narrow, wide)}
    n_one = one.meta["training"]["n_modules_train"]
    assert both.meta["training"]["n_modules_train"] == n_one + n_one * layers[narrow] // layers[wide]
    assert both.meta["data"]["n_train_items"] == one.meta["data"]["n_train_items"]
    # the network's loss weighs each (member, short/long answers) group alike; one proxy keeps the plain mean
    assert "group" in both.meta["loss"] and "group" not in one.meta["loss"]
    # r2f fidelity names the ladder the decoder was trained on
    from typer.testing import CliRunner

    from r2f.cli import _load_commands, app

    _load_commands()
    r = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["fidelity", "--decoder", str(tmp_path / "ladder.safetensors"), "--model", narrow,
                                 "--data", str(world_dir), "--max-batches", "1", "--no-cost", "--access", "lora",
                                 "--out", str(tmp_path / "fid.json")])
    assert r.exit_code == 0, r.output
    assert f"access lora, trained on 2 proxies ({Path(narrow).name}, {Path(wide).name})" in r.output
    # a (model, tokenizer) pair is one proxy, not a ladder of two
    pair = (tiny_llama(dtype=torch.float32), object())
    assert as_ladder(pair) == [pair] and as_ladder(narrow) == [narrow] and len(as_ladder([narrow, wide])) == 2


def test_a_side_decoder_leaves_the_default_learned_decoder_alone(tiny_models, world_dir, tmp_path, monkeypatch):
    """``out=`` makes the decoder the machine's default (``--decoder learned``) unless ``set_default=False``:
    a benchmark's or experiment's decoder must not replace the one a user's ``r2f unlearn`` picks up."""
    from r2f.decoders import train_decoder
    from r2f.decoders.api import default_decoder_path

    monkeypatch.setenv("R2F_CACHE", str(tmp_path / "cache"))
    kw = dict(rank=4, steps=5, probe_seeds=1, max_items=8, long_answers=False)
    first = tmp_path / "default.safetensors"
    train_decoder(str(tiny_models["proxy"]), world_dir, out=first, **kw)
    assert default_decoder_path() == first.resolve()
    side = tmp_path / "side.safetensors"
    train_decoder(str(tiny_models["proxy"]), world_dir, out=side, set_default=False, **kw)
    assert side.is_file() and default_decoder_path() == first.resolve()
