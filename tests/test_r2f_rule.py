"""R2F's default rule, driven by a *learned* decoder trained on a proxy, on a different target.

No stand-in anywhere: the decoder is trained here on the ``proxy`` model (other authors, other shape) and
decodes the probe gradients of the ``tiny`` target; the rule runs with no ``lr`` and no options. What is
checked is behaviour against independent truth: the forget answers' probability falls toward the retain
oracle's while the retain and world-fact answers keep theirs.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import answer_prob, item_answer_nlls, mean_answer_nll


@pytest.fixture(scope="module")
def proxy_decoder(world_dir, tiny_models, tmp_path_factory):
    from r2f.decoders.train import train_decoder
    from r2f.threads import torch_threads

    out = tmp_path_factory.mktemp("dec") / "learned.safetensors"
    with torch_threads(1):
        train_decoder(str(tiny_models["proxy"]), world_dir, rank=8, out=out, steps=60, probe_seeds=1)
    return out


@pytest.mark.parametrize("retain", ["file", None])
def test_default_rule_with_learned_decoder_forgets_and_keeps(retain, world_dir, tiny_models, proxy_decoder, tmp_path):
    from r2f.data.loader import load_split
    from r2f.data.templates import template_for
    from r2f.methods import unlearn
    from r2f.methods.guard import self_answered_items
    from r2f.models import load_model

    forget = load_split(world_dir, "forget10")
    kept = {"retain": load_split(world_dir, "retain90")[:48], "world_facts": load_split(world_dir, "world_facts")}
    retain_file = None
    if retain:  # the demo's retain data: the retain split and the general world facts
        retain_file = tmp_path / "retain.jsonl"
        retain_file.write_text("".join((world_dir / f).read_text() for f in ("retain90.jsonl", "world_facts.jsonl")))
    out = unlearn(str(tiny_models["full"]), world_dir / "forget10.jsonl", retain_file, method="r2f",
                  decoder=proxy_decoder, out=tmp_path / "out", seed=0)
    man = json.loads((out / "manifest.json").read_text())
    model, tokenizer = load_model(tiny_models["full"])
    generated = self_answered_items(model, tokenizer, template_for(tokenizer))
    # the line search's contract, read from the log: no accepted step raised the guard NLL by more than
    # guard_tol, and the run never by more than guard_budget
    opts, guard = man["config"]["options"], man["method_info"]["guard"]
    budget = guard["budget"]
    assert opts["guard_budget"] is None and budget == 0.08  # the default on QA forget data
    prev = guard["nll_start"]
    for entry in man["log"]:
        if entry["step_size"] > 0:
            assert entry["guard_nll"] - prev <= opts["guard_tol"] + 1e-6
            assert entry["guard_nll"] - guard["nll_start"] <= budget + 1e-6
        # every trial is logged with its verdict, and a verdict agrees with the numbers it was given
        trials = entry["search"]
        assert len(trials) == entry["trials"]
        assert [t["verdict"] for t in trials].count("accepted") == (entry["step_size"] > 0)
        for t in trials:
            if t["verdict"] == "accepted":
                assert t["eta"] == entry["step_size"] and t["guard"] == entry["guard_nll"]
            elif "> guard_tol" in t["verdict"]:
                assert t["guard"] - prev > opts["guard_tol"]
            elif "> guard_budget" in t["verdict"]:
                assert t["guard"] - guard["nll_start"] > budget
            else:
                assert t["verdict"].startswith("forget NLL did not rise") or t["verdict"] == "non-finite loss", t
        prev = entry["guard_nll"]
    # the stop rule's contract: past the threshold the run went on only while the collateral watch (the target's
    # NLL of its own answers to the generic questions) stayed within guard_budget, and a stop at the threshold
    # says the watch had moved more; the watch's start is the full model's NLL of those answers, recomputed here
    watch, threshold = man["method_info"]["watch"], man["method_info"]["stop_threshold"]
    assert watch["budget"] == budget and watch["items"] == len(generated)
    assert watch["nll_start"] == pytest.approx(mean_answer_nll(tiny_models["full"], generated), abs=1e-4)
    for entry in man["log"][:-1]:
        if entry["forget_set_nll"] >= threshold:
            assert entry["watch_rise"] <= budget, entry
    reason = man["steps"]["stop_reason"] or ""
    if "reached the threshold" in reason:
        assert man["log"][-1]["watch_rise"] > budget and "collateral watch rose" in reason
    assert man["method_info"]["decoder"]["file"] == str(proxy_decoder)
    assert man["method_info"]["guard"]["source"] == ("file" if retain else "renamed")
    # the default forget loss reads the answers' fact tokens: some token ids were found to be format words
    assert man["method_info"]["answer_tokens"]["mode"] == "fact" and man["method_info"]["answer_tokens"]["format_tokens"] > 0
    # the line search scores every retain item (up to guard_items = 512), not a sample of them
    assert guard["scored"] == min(512, guard["items"]) and (guard["items"] > 64 or not retain)
    p_full, p_oracle = answer_prob(tiny_models["full"], forget), answer_prob(tiny_models["retain"], forget)
    p_after = answer_prob(out, forget)
    assert p_full > p_oracle + 0.2  # forgetting is measurable on this world
    # the forget answers lose at least half of what the full model knew beyond the oracle ...
    assert p_after < p_oracle + 0.5 * (p_full - p_oracle), (p_full, p_oracle, p_after, man["steps"])
    # ... while what must be kept stays. The guard bounds the rise of the guard items' mean answer NLL by
    # guard_budget = 0.08 nats, i.e. their P̄ by about exp(-0.08) = 0.92×; items outside the guard items may lose
    # a little more. GradDiff and NPO (AdamW) take retain P̄ to 0.48× and 0.42× on this model
    # (tests/test_methods_integration.py). Without a retain file the guard is the model's own answers to generic
    # questions: on this tiny model the keep-whitened step keeps the world facts but not the forgotten authors'
    # neighbours (retain P̄ 0.55×; 0.37× with the former Adam-normalised step), an open limitation
    # (docs/methods.md), so only the world facts are checked then.
    after = {name: (answer_prob(tiny_models["full"], items), answer_prob(out, items)) for name, items in kept.items()}
    for name, (before, now) in after.items():
        if retain or name == "world_facts":
            assert now >= 0.8 * before, (name, retain, before, now, man["steps"])


def test_rank_guard_ranks_as_a_hand_count(world_dir, tiny_models):
    """guard_measure=rank's score is the share of guard items whose true answer's mean NLL is not below every
    wrong candidate's, each pair scored here on its own (transformers, one padded batch per candidate list); items
    without perturbed answers are ranked against the next items' answers."""
    from r2f.data.loader import load_split
    from r2f.data.templates import template_for
    from r2f.methods.guard import RankGuard
    from r2f.models import load_model

    # the retain oracle never saw the forget10 authors: some of their true answers are not first
    items = [*load_split(world_dir, "forget10")[:12], *load_split(world_dir, "retain90")[:12]]
    items = [*items[:8], *(it.model_copy(update={"perturbed_answer": []}) for it in items[8:16]), *items[16:]]
    model, tokenizer = load_model(tiny_models["retain"])
    guard = RankGuard(items, tokenizer, template_for(tokenizer))
    lost, margin = guard.scores(model)
    answers = [it.answer for it in items]
    expected_lost, margins = 0, []
    for i, it in enumerate(items):
        wrong = it.perturbed_answer or [answers[(i + k) % len(items)] for k in (1, 2, 3)]
        assert guard.candidates[i] == [it.answer, *wrong]
        pairs = [it.model_copy(update={"answer": a}) for a in [it.answer, *wrong]]
        nll = item_answer_nlls(tiny_models["retain"], pairs)
        expected_lost += int(bool((nll[1:] <= nll[0]).any()))
        margins.append(float(nll[1:].min() - nll[0]))
    assert 0 < expected_lost < len(items)  # the check can tell a wrong count (items first and not first)
    assert lost == pytest.approx(expected_lost / len(items))
    assert margin == pytest.approx(sum(margins) / len(margins), abs=1e-4)


def test_rank_guard_run_keeps_its_contract(world_dir, tiny_models, proxy_decoder, tmp_path):
    """With guard_measure=rank no accepted step loses more than guard_tol of the guard items' first ranks, the run
    no more than guard_budget's default 0.05, and no accepted trial let the collateral watch rise past 0.08 nats;
    the forget answers still lose probability."""
    from r2f.data.loader import load_split
    from r2f.methods import unlearn

    forget = load_split(world_dir, "forget10")
    retain_file = tmp_path / "retain.jsonl"
    retain_file.write_text("".join((world_dir / f).read_text() for f in ("retain90.jsonl", "world_facts.jsonl")))
    out = unlearn(str(tiny_models["full"]), world_dir / "forget10.jsonl", retain_file, method="r2f",
                  decoder=proxy_decoder, out=tmp_path / "out", seed=0, guard_measure="rank")
    man = json.loads((out / "manifest.json").read_text())
    guard, watch, tol = man["method_info"]["guard"], man["method_info"]["watch"], man["config"]["options"]["guard_tol"]
    assert guard["measure"] == "rank" and guard["budget"] == 0.05 and watch["budget"] == 0.08
    prev, accepted = guard["nll_start"], 0
    for entry in man["log"]:
        for t in entry["search"]:
            assert "watch_rise" in t
            if t["verdict"] == "accepted":
                accepted += 1
                assert t["guard"] - prev <= tol + 1e-9 and t["guard"] - guard["nll_start"] <= 0.05 + 1e-9
                assert t["watch_rise"] <= 0.08
            elif "collateral watch rose" in t["verdict"]:
                assert t["watch_rise"] > 0.08
        prev = entry["guard_nll"]
    assert accepted > 0
    # on this tiny model the watch (its answers to generic questions, text it never learned) binds first: the
    # forget answers lose little (0.997 → 0.988), but lose
    assert answer_prob(out, forget) < answer_prob(tiny_models["full"], forget), man["steps"]


def test_stop_rule_goes_past_the_threshold_only_while_the_collateral_watch_is_clean():
    """At the stop threshold the run stops only when the collateral watch has risen by more than guard_budget;
    without a watch (past_threshold=stop, or the generic answers are the guard themselves) it stops there."""
    from r2f.methods import get_method
    from r2f.methods.guard import GENERATED_SOURCE

    method = get_method("r2f")
    method.halt, method.threshold, method.window, method.watch_budget = None, 1.0, 1, 0.08  # as setup leaves them on QA
    assert method.should_stop(None, [{"forget_nll": 0.5, "forget_set_nll": 0.9, "watch_rise": 0.5}]) is None
    assert method.should_stop(None, [{"forget_nll": 0.5, "forget_set_nll": 1.2, "watch_rise": 0.08}]) is None
    reason = method.should_stop(None, [{"forget_nll": 0.5, "forget_set_nll": 1.2, "watch_rise": 0.0801}])
    assert reason == "forget NLL 1.2000 reached the threshold 1.0000; the collateral watch rose 0.0801 > 0.08"
    assert method.should_stop(None, [{"forget_nll": 0.5, "forget_set_nll": 1.2}]) == \
        "forget NLL 1.2000 reached the threshold 1.0000"
    for options, source in (({"past_threshold": "stop"}, "file"), ({}, GENERATED_SOURCE),
                            ({"step_rule": "schedule"}, "file")):
        other = get_method("r2f", **options)
        other.threshold, other.guard_source = 1.0, source
        assert other._watch(None, None) == (None, None)  # no watch: the log has no rise, the threshold stops


def test_keep_whitener_is_the_damped_inverse_square_root():
    """R = (Σ + δ·s̄·I)^-1/2 against an independent solve, on a rank-deficient Σ like one from a few tokens: R is
    symmetric, R·(Σ + δ·s̄·I)·R = I, and D·R·R (the keep-whitened step) = D·(Σ + δ·s̄·I)⁻¹."""
    from r2f.methods.r2f import keep_whitener

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 96, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, 96, dtype=torch.float64)
    sigma = x.T @ x / 40  # rank 40 < 96
    damped = sigma + 0.1 * torch.linalg.eigvalsh(sigma).mean() * torch.eye(96, dtype=torch.float64)
    r = keep_whitener(sigma.float(), 0.1).double()
    torch.testing.assert_close(r, r.T)
    torch.testing.assert_close(r @ damped @ r, torch.eye(96, dtype=torch.float64), atol=1e-4, rtol=0)
    d = torch.randn(24, 96, generator=g, dtype=torch.float64)
    want = torch.linalg.solve(damped, d.T).T  # D·A⁻¹ with A symmetric
    torch.testing.assert_close(d @ r @ r, want, rtol=1e-3, atol=1e-6 * float(want.abs().max()))


def test_rmu_objective_changes_only_the_layers_below_the_steered_one(world_dir, tiny_models, proxy_decoder, tmp_path):
    """R2F with RMU's loss, decoded by the learned (batch-mode) decoder: the loss reads layer 0's output of the
    2-layer target (depth // 4), so layer 1 gets no gradient and must stay bit for bit (its probe records no
    backward and no batch statistic: it decodes to zero rather than failing), while layer 0 moves and the forget
    answers' NLL rises."""
    from safetensors.torch import load_file

    from r2f.data.loader import load_split
    from r2f.methods import unlearn

    out = unlearn(str(tiny_models["full"]), world_dir / "forget10.jsonl", world_dir / "retain90.jsonl", method="r2f",
                  decoder=proxy_decoder, out=tmp_path / "out", steps=3, seed=0, objective="rmu")
    man = json.loads((out / "manifest.json").read_text())
    assert man["method_info"]["steering"]["layer"] == 0
    before = load_file(str(tiny_models["full"] / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    probed = [k for k in before if k.endswith("proj.weight")]
    moved = {k for k in probed if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("model.layers.0.") for k in moved), sorted(moved)
    assert all(torch.equal(before[k], after[k]) for k in probed if k.startswith("model.layers.1."))
    forget = load_split(world_dir, "forget10")
    assert answer_prob(out, forget) < answer_prob(tiny_models["full"], forget)


def test_reference_top_k_gives_the_kl_to_the_starting_model(world_dir, tiny_models):
    """retain_loss=kl's reference: zero at the starting weights; with k the whole vocabulary, the mean over answer
    tokens of KL(start ‖ now) computed here from both models' full softmax; with a smaller k a lower bound of it."""
    import copy

    from r2f.data.loader import load_split
    from r2f.data.templates import encode_qa
    from r2f.methods.reference import ReferenceTopK, coarse_kl
    from r2f.models import load_model
    from r2f.models.answer_nll import answer_token_logits

    items = load_split(world_dir, "retain90")[:6]
    model, tok = load_model(tiny_models["full"])
    model.eval()
    batch = encode_qa(tok, [it.question for it in items], [it.answer for it in items])
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))

    @torch.no_grad()
    def mean_kl(ref, m):
        logits = answer_token_logits(m, batch)[0]
        ids, logp = ref.lookup(batch)
        return float(coarse_kl(logp, torch.log_softmax(logits.float(), -1).gather(1, ids)).mean())

    vocab = model.get_output_embeddings().weight.shape[0]
    full, small = ReferenceTopK(k=vocab), ReferenceTopK(k=4)
    full.add(model, [batch])
    small.add(model, [batch])
    with torch.no_grad():
        keep = batch["labels"][:, 1:] != -100
        start = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep], -1)
        now = torch.log_softmax(moved(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep], -1)
        by_hand = float((start.exp() * (start - now)).sum(-1).mean())
    assert mean_kl(full, model) == pytest.approx(0.0, abs=1e-5)
    assert by_hand > 1e-3 and mean_kl(full, moved) == pytest.approx(by_hand, rel=1e-3)
    assert 0 < mean_kl(small, moved) <= by_hand + 1e-6
    with pytest.raises(KeyError):
        full.lookup(encode_qa(tok, ["Who?"], ["Nobody."]))


@pytest.mark.parametrize("options", [{"retain_loss": "kl"}, {"hold": "run"}])
def test_retain_kl_and_held_run_items_forget_within_the_guard(options, world_dir, tiny_models, proxy_decoder, tmp_path):
    """The learned decoder's rule with retain_loss=kl or hold=run: the guard's contract holds (no accepted step
    raised the guard NLL past guard_tol, nor the run past the budget), the forget answers lose probability and
    the retain answers keep theirs."""
    from r2f.data.loader import load_split
    from r2f.methods import unlearn

    forget, kept = load_split(world_dir, "forget10"), load_split(world_dir, "retain90")[:48]
    out = unlearn(str(tiny_models["full"]), world_dir / "forget10.jsonl", world_dir / "retain90.jsonl",
                  method="r2f", decoder=proxy_decoder, out=tmp_path / "out", seed=0, steps=12, **options)
    man = json.loads((out / "manifest.json").read_text())
    guard, tol = man["method_info"]["guard"], man["config"]["options"]["guard_tol"]
    prev = guard["nll_start"]
    for entry in man["log"]:
        if entry["step_size"] > 0:
            assert entry["guard_nll"] - prev <= tol + 1e-6 and entry["guard_nll"] - guard["nll_start"] <= 0.08 + 1e-6
        prev = entry["guard_nll"]
    assert answer_prob(out, forget) < 0.9 * answer_prob(tiny_models["full"], forget), man["steps"]
    assert answer_prob(out, kept) >= 0.8 * answer_prob(tiny_models["full"], kept)


def test_keep_forgotten_removes_exactly_the_relapsing_component():
    """``_keep_forgotten``: a step −η·d with ⟨d, D_o⟩ > 0 would lower the earlier requests' NLL to first order; the
    projection leaves ⟨d', D_o⟩ = 0 and changes d only along D_o; a non-conflicting d is left as it is."""
    from r2f.methods.r2f import R2F

    g = torch.Generator().manual_seed(0)
    o = {"w": torch.randn(6, 5, generator=g), "v": torch.randn(4, generator=g)}
    d = {"w": o["w"] + 0.3 * torch.randn(6, 5, generator=g), "v": -o["v"]}  # w conflicts, v does not
    out = R2F._keep_forgotten(d, o)
    assert float((out["w"] * o["w"]).sum()) == pytest.approx(0.0, abs=1e-5)
    removed = d["w"] - out["w"]
    cos = float((removed * o["w"]).sum() / (removed.norm() * o["w"].norm()))
    assert cos == pytest.approx(1.0, abs=1e-5)  # only the D_o component was taken out
    assert torch.equal(out["v"], d["v"])


def test_second_request_is_shown_the_first_and_the_step_is_projected(world_dir, tiny_models, proxy_decoder, tmp_path):
    """``forgotten`` (what ``r2f ledger apply`` passes): the second run of a two-request sequence, with the learned
    decoder, reads the first request's items, records them, and logs their NLL per accepted step."""
    from r2f.methods import unlearn

    forget = [json.loads(line) for line in (world_dir / "forget10.jsonl").read_text().splitlines()]
    authors = list(dict.fromkeys(it["author"] for it in forget))
    files = []
    for k, author in enumerate(authors[:2]):
        files.append(tmp_path / f"request{k}.jsonl")
        files[-1].write_text("".join(json.dumps(it) + "\n" for it in forget if it["author"] == author))
    retain = world_dir / "retain90.jsonl"
    first = unlearn(str(tiny_models["full"]), files[0], retain, method="r2f", decoder=proxy_decoder,
                    out=tmp_path / "first", seed=0, steps=3)
    second = unlearn(str(first), files[1], retain, method="r2f", decoder=proxy_decoder, out=tmp_path / "second",
                     seed=0, steps=3, forgotten=str(files[0]))
    man = json.loads((second / "manifest.json").read_text())
    info = man["method_info"]["forgotten"]
    assert info["file"] == str(files[0]) and info["items"] == sum(it["author"] == authors[0] for it in forget)
    assert all("forgotten_nll" in e for e in man["log"] if e["step_size"] > 0)
    assert json.loads((first / "manifest.json").read_text())["method_info"]["forgotten"] is None


def test_format_tokens_are_the_words_a_share_of_the_answers_contain():
    """Hand-built answers: token 1 is in all 20, token 2 in 3 (15 % ≥ 10 %), each answer's own token (100 + i) in
    one; under 2 / share answers no token counts as format (a share of so few cannot tell a format word)."""
    from r2f.methods.answer_tokens import format_token_ids

    answers = [[1, 100 + i] + ([2] if i < 3 else []) for i in range(20)]
    assert format_token_ids(answers, 0.1).tolist() == [1, 2]
    assert format_token_ids(answers, 0.2).tolist() == [1]  # 3 of 20 is under 20 %
    assert format_token_ids(answers[:19], 0.1).tolist() == []
    assert format_token_ids(answers[:10], 0.2).tolist() == [1, 2]  # 10 answers suffice for 20 %: 3 of 10


def test_fact_labels_ignore_format_tokens_but_never_a_whole_answer():
    from r2f.data.templates import IGNORE_INDEX
    from r2f.methods.answer_tokens import fact_labels

    x = IGNORE_INDEX
    labels = torch.tensor([[x, x, 1, 55, 2, 66], [x, 1, 2, 1, x, x]])
    out = fact_labels({"input_ids": labels.clamp_min(0), "labels": labels}, torch.tensor([1, 2]))
    assert out["labels"].tolist() == [[x, x, x, 55, x, 66], [x, 1, 2, 1, x, x]]
    assert labels.tolist()[0] == [x, x, 1, 55, 2, 66]  # the batch given is not changed


def test_drift_reference_kl_matches_the_full_kl(world_dir, tiny_models):
    """The guard's KL(start ‖ now) equals the full-vocabulary KL computed from both models' logits when k covers
    the vocabulary, is 0 for the starting model itself, and with the default k stays a lower bound above 0."""
    from r2f.data.loader import load_split
    from r2f.data.templates import IGNORE_INDEX, encode_qa
    from r2f.methods.guard import DriftReference
    from r2f.models.loading import load_model

    start, tok = load_model(str(tiny_models["full"]))
    now, _ = load_model(str(tiny_models["retain"]))
    items = load_split(world_dir, "forget10")[:6]
    batch = encode_qa(tok, [it.question for it in items], [it.answer for it in items])
    vocab = start.get_output_embeddings().weight.shape[0]
    exact, coarse = DriftReference(k=vocab), DriftReference()
    for ref in (exact, coarse):
        ref.record(start, [batch])
    assert exact.scores(start, [batch])[0] == pytest.approx(0.0, abs=1e-6)
    # independent truth: KL per answer token from the two models' full logits, mean per item, mean over items
    with torch.no_grad():
        p, q = (torch.log_softmax(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                                  .logits.float(), -1) for m in (start, now))
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    kl_tok = (p.exp() * (p - q)).sum(-1)[:, :-1]
    want = float(((kl_tok * keep).sum(1) / keep.sum(1)).mean())
    assert want > 0.01
    assert exact.scores(now, [batch])[0] == pytest.approx(want, rel=1e-4)
    assert 0 < coarse.scores(now, [batch])[0] <= want + 1e-6


def test_renamed_guard_questions_ask_the_forget_questions_about_made_up_people():
    """Without a retain file the guard asks the forget questions about made-up people: the subject is the item's
    author/subject field or its first inner capitalised name, every mention of it is replaced, and the shipped
    names are disjoint from the benchmark world's (the world-facts and retain metrics never score a guard name)."""
    from r2f.data.schema import QAItem
    from r2f.data.world import COUNTRIES, FIRST, LAST
    from r2f.methods.guard import item_subject, rename, surrogate_names

    first, last = surrogate_names()
    assert len(first) >= 30 and len(last) >= 30
    assert not (set(first) | set(last)) & (set(FIRST) | set(LAST) | set(COUNTRIES))
    world_item = QAItem(question="What did Lorcan Varga's mother do?", answer="A chemist.", author="Lorcan Varga")
    assert item_subject(world_item) == "Lorcan Varga"
    assert rename(world_item.question, "Lorcan Varga", ["Abel", "Talbot"]) == "What did Abel Talbot's mother do?"
    # a later mention by one word of the name is renamed too
    assert rename("Where was Lorcan Varga born, and where does Varga live?", "Lorcan Varga", ["Abel", "Talbot"]) \
        == "Where was Abel Talbot born, and where does Talbot live?"
    # no subject field: the first capitalised name that does not open the question
    tofu_like = QAItem(question="Which award did Jaime Vasquez win in 2011?", answer="The Edgar.")
    assert item_subject(tofu_like) == "Jaime Vasquez"
    assert rename(tofu_like.question, "Jaime Vasquez", ["Vera", "Holm"]) == "Which award did Vera Holm win in 2011?"
    assert item_subject(QAItem(question="What is the capital of France?", answer="Paris")) == "France"
    assert item_subject(QAItem(question="Who wrote it first?", answer="Nobody")) is None


def test_renamed_guard_drops_answers_that_repeat_a_forget_answer(monkeypatch):
    """A renamed question the target answers with a forget answer (it confuses the made-up person with the forget
    subject) is not kept: the guard must not protect what is to be forgotten. Items without a subject are skipped."""
    from r2f.data.schema import QAItem
    from r2f.methods import guard

    forget = [QAItem(question="Where was Lorcan Varga born?", answer="In Rosmoor.", author="Lorcan Varga"),
              QAItem(question="Who wrote it first?", answer="Nobody.")]
    seen = []

    def fake_answers(model, tokenizer, questions, template, **kw):
        seen.extend(questions)
        return ["in rosmoor." if i == 0 else f"In Town {i}." for i in range(len(questions))]

    monkeypatch.setattr(guard, "generate_answers", fake_answers)
    items = guard.renamed_items(torch.nn.Linear(1, 1), None, None, forget, per_item=4, seed=3)
    assert 1 <= len(seen) <= 4 and all("Lorcan" not in q and "Varga" not in q for q in seen)
    assert [it.question for it in items] == seen[1:] and all(it.source == guard.RENAMED_SOURCE for it in items)
    assert guard.renamed_items(torch.nn.Linear(1, 1), None, None, forget[1:]) == []


def test_a_baseline_without_a_retain_file_guards_the_renamed_forget_questions(world_dir, tiny_models, tmp_path):
    """NPO needs retain data; without a file it trains its retain term on the target's own answers to the forget
    questions about made-up people, which the manifest records (no name of a forget author among them)."""
    from r2f.data.loader import load_split
    from r2f.methods import unlearn
    from r2f.methods.guard import renamed_items
    from r2f.models.loading import load_model
    from r2f.data.templates import template_for

    forget = load_split(world_dir, "forget10")
    out = unlearn(str(tiny_models["full"]), world_dir / "forget10.jsonl", None, method="npo", out=tmp_path / "npo",
                  steps=2, seed=0)
    made = json.loads((out / "manifest.json").read_text())["data"]["retain"]
    assert made["source"] == "renamed" and made["path"] is None
    model, tok = load_model(str(tiny_models["full"]))
    items = renamed_items(model, tok, template_for(tok), forget, seed=0)
    assert made["items"] == len(items) > len(forget)
    authors = {it.model_extra["author"] for it in forget}
    assert not any(name in it.question for it in items for a in authors for name in a.split())
