"""How specific is one forget step on realfacts? Forget / neighbour / general known after a single step of size η.

A 10-step realfacts row takes 25–40 min on this project's 2-core machine; this asks the narrower question in a few
minutes per direction: take one step's direction at SmolLM2 as shipped, apply it at several step sizes η from the
starting weights, and score the known shares (``r2f eval --bench realfacts``' metric). A specific step loses forget
facts at a much higher rate than neighbour facts (same relations, other subjects) and general facts. Two kinds of
direction (each a positional argument):

- ``r2f[:KEY=VALUE,...]``: the first step R2F would take in the realfacts demo (the demo's options, the proxy's
  decoder, its guard and keep-whitening; the ``-o`` values replace options), captured where R2F applies it and
  scaled as R2F scales it (η = relative change of the probed weights, the line search's first trial is 0.004). Its
  forget batch is the step's 8 facts, so the forget share can fall by at most 8/34 from the step's own batch.
- ``exact[:positions=all|subject|last,modules=all|mlp,project=K,steps=N,repair=L]``: the exact gradient of the
  fact-token NLL (the tokens of each answer's short ``target``) of *all* forget facts, one view, stepped along
  +gradient with η·‖W‖/‖D‖ over the chosen projections; ``positions`` keeps only the weight-gradient terms δₜxₜᵀ at
  the question's subject tokens (or its last one, as locate-then-edit methods do); ``project=K`` removes the part of
  the direction in the span of K retain facts' own gradients per relation of the request (retain split: never
  scored). ``steps=N`` (no ``project``) takes N steps of η instead, the gradient taken again before each, and
  ``repair=L`` subtracts L times the unit fact-token NLL gradient of 16 random retain facts from each unit step
  (a retain-descent term); the shares are read after the N-th step.

    python benchmarks/realfacts_step_specificity.py --out /tmp/spec --request 1 r2f r2f:sigma_damp=0.005
    python benchmarks/realfacts_step_specificity.py --out /tmp/spec --request 1 --etas 0.0003,0.001,0.002 \\
        exact exact:positions=last,modules=mlp exact:positions=last,modules=mlp,project=8

Writes ``OUT/specificity.json`` (every direction's shares per η) after each direction. A diagnostic for choosing
what to try on a development request, not a result: a step that looks specific here still has to win the 10-step
rows (``benchmarks/realfacts_demo_rows.py``) on requests never used for choosing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SPLITS = ("forget", "neighbour", "general")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = spec.partition(":")
    if kind not in ("r2f", "exact"):
        raise SystemExit(f"direction {spec!r}: must start with r2f or exact")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return kind, opts


def token_span(row: list[int], sub: list[int], start: int, stop: int) -> list[int] | None:
    """Positions of the last occurrence of ``sub`` in ``row[start:stop]``."""
    for s in range(stop - len(sub), start - 1, -1):
        if row[s:s + len(sub)] == sub:
            return list(range(s, s + len(sub)))
    return None


def encode_facts(tokenizer, template, items):
    """The items' chat-formatted batch with labels on the short answer's tokens only, and a mask of the question's
    subject tokens (and of its last subject token)."""
    from r2f.data.batching import QAEncoder

    enc = QAEncoder(tokenizer, template, 512)([it.question for it in items], [it.answer for it in items])
    ids, labels = enc["input_ids"], enc["labels"]
    subject, last = torch.zeros(ids.shape), torch.zeros(ids.shape)
    for r, it in enumerate(items):
        extra, row = it.model_extra or {}, ids[r].tolist()
        answer_start = int((labels[r] != -100).nonzero()[0])
        stop = int(enc["attention_mask"][r].sum())

        def find(text, start, end):
            return next((p for v in (" " + text, text)
                         if (p := token_span(row, tokenizer.encode(v, add_special_tokens=False), start, end))), None)

        where = find(extra["subject"], 0, answer_start)
        if where is None:
            raise SystemExit(f"{extra.get('id')}: subject {extra['subject']!r} not found in the question's tokens")
        subject[r, where] = 1
        last[r, where[-1]] = 1
        fact = find(extra["target"], answer_start, stop)
        if fact is not None:  # else the whole answer
            keep = torch.zeros(len(row), dtype=torch.bool)
            keep[fact] = True
            labels[r, ~keep] = -100
    return enc, {"subject": subject, "last": last}


class MaskedWeightGradients:
    """Makes the probed Linears' weight gradients Σₜ mₜ·δₜxₜᵀ for a position mask m while every other gradient
    (and the forward value) stays as it is: y = W(m⊙x) + sg(W)((1−m)⊙x)."""

    def __init__(self, modules):
        self.mask: torch.Tensor | None = None
        for m in modules:
            m.forward = self._forward(m)

    def _forward(self, mod):
        def forward(x):
            if self.mask is None:
                return F.linear(x, mod.weight, mod.bias)
            m = self.mask[..., None].to(x.dtype)
            return F.linear(x * m, mod.weight, mod.bias) + F.linear(x * (1 - m), mod.weight.detach())
        return forward


def fact_nll_gradient(model, params, enc, masker, mask) -> torch.Tensor:
    masker.mask = mask
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1].float()
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), enc["labels"][:, 1:].reshape(-1), ignore_index=-100).backward()
    masker.mask = None
    return torch.cat([p.grad.detach().flatten() for p in params.values()])


def exact_setup(model, tokenizer, template, bench, opts):
    """What both ``exact`` modes read: the chosen projections' weights (their gradients maskable), the forget and
    retain facts, and the forget facts' batch with its subject masks."""
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith("_proj")]
    if opts.get("modules", "all") == "mlp":
        modules = [(n, m) for n, m in modules if ".mlp." in n]
    params = {n + ".weight": m.weight for n, m in modules}
    masker = MaskedWeightGradients([m for _, m in modules])
    _, forget = bench.split("forget")
    _, retain = bench.split("retain")
    enc, masks = encode_facts(tokenizer, template, forget)
    positions = opts.get("positions", "all")
    return params, masker, forget, retain, enc, None if positions == "all" else masks[positions]


def exact_direction(model, tokenizer, template, bench, opts) -> tuple[dict[str, torch.Tensor], dict]:
    """``exact:...``: the (masked, projected) fact-token NLL gradient per weight, and its step scale ‖W‖/‖D‖."""
    params, masker, forget, retain, enc, mask = exact_setup(model, tokenizer, template, bench, opts)
    d = fact_nll_gradient(model, params, enc, masker, mask)
    info = {}
    k = int(opts.get("project", 0))
    if k:
        basis: list[torch.Tensor] = []
        for relation in sorted({it.model_extra["relation"] for it in forget}):
            same = [it for it in retain if it.model_extra["relation"] == relation][:k]
            for it in same:
                g = fact_nll_gradient(model, params, encode_facts(tokenizer, template, [it])[0], masker, None)
                for b in basis:
                    g -= (g @ b) * b
                if g.norm() > 0:
                    basis.append(g / g.norm())
        info["max_cos_to_retain"] = max(abs(float(d @ b)) for b in basis) / float(d.norm())
        for b in basis:
            d -= (d @ b) * b
        info["retain_directions"] = len(basis)
    w_norm = torch.sqrt(sum((p.detach().float() ** 2).sum() for p in params.values()))
    scale = float(w_norm / d.norm())
    out, off = {}, 0
    for n, p in params.items():
        out[n] = scale * d[off:off + p.numel()].view_as(p)
        off += p.numel()
    return {n: -v for n, v in out.items()}, info  # applied as W ← W − η·D, like R2F's step


def iterated_exact(model, tokenizer, template, bench, opts, spec, etas, known) -> dict:
    """``exact:...,steps=N[,repair=L]``: per η, N re-linearised steps from the starting weights, then the shares."""
    import random

    if "project" in opts:
        raise SystemExit(f"direction {spec!r}: steps= does not take project=")
    params, masker, _, retain, enc, mask = exact_setup(model, tokenizer, template, bench, opts)
    start = {n: p.detach().clone() for n, p in params.items()}
    repair = float(opts.get("repair", 0))
    w_norm = torch.sqrt(sum((p.detach().float() ** 2).sum() for p in params.values()))
    row = {"direction": spec, "by_eta": {}}
    t0 = time.perf_counter()
    for eta in etas:
        rng = random.Random(0)
        for _ in range(int(opts["steps"])):
            d = fact_nll_gradient(model, params, enc, masker, mask)
            d = d / d.norm()
            if repair:
                r = fact_nll_gradient(model, params, encode_facts(tokenizer, template, rng.sample(retain, 16))[0],
                                      masker, None)
                d = d - repair * r / r.norm()
            off = 0
            with torch.no_grad():
                for p in params.values():
                    p.add_(eta * w_norm * d[off:off + p.numel()].view_as(p))
                    off += p.numel()
        row["by_eta"][str(eta)] = known()
        print(spec, eta, row["by_eta"][str(eta)], f"{time.perf_counter() - t0:.0f} s", flush=True)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
    return row


def r2f_direction(prep, cfg, opts, out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``r2f:...``: the guarded, whitened direction R2F's first step applies, times its unit scale."""
    from r2f.commands.unlearn import _parse_options
    from r2f.demo import run_method
    from r2f.methods.r2f import R2F

    captured: dict = {}

    def capture(params, directions, unit, eta, base=None):  # R2F._apply, without changing any weight
        captured.update({n: unit[n] * d.detach().clone() for n, d in directions.items()})

    original = R2F._apply
    R2F._apply = staticmethod(capture)
    try:
        overrides = _parse_options([f"{k}={v}" for k, v in opts.items()])
        overrides.update(step_rule="schedule", lr=0.001)  # one step, no line search: only its direction is kept
        run_method(prep, cfg, "r2f", out, overrides)
    finally:
        R2F._apply = original
    return captured, {}


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.data.realfacts import load_realfacts, write_request
    from r2f.data.templates import template_for
    from r2f.demo import DemoConfig, prepare
    from r2f.distributed import ONE_PROCESS
    from r2f.eval.realfacts import known_by_index, realfacts_context

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directions", nargs="+", metavar="DIRECTION", help="r2f[:KEY=VALUE,...] or exact[:...]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--request", type=int, default=1, help="realfacts forget request (default 1: development)")
    ap.add_argument("--etas", default="0.001,0.002,0.004,0.008", help="step sizes, comma-separated")
    args = ap.parse_args(argv)
    specs = [parse_spec(s) for s in args.directions]
    etas = [float(e) for e in args.etas.split(",")]
    data = str(write_request(args.out / f"realfacts-request-{args.request}", args.request)) if args.request else None
    cfg = DemoConfig(target="smollm2-base", bench="realfacts", seed=0, steps=1, realfacts_data=data)
    prep = prepare(args.out, cfg, lambda _: None, {})
    bench = load_realfacts(data)
    tokenizer = AutoTokenizer.from_pretrained(prep.full)
    model = AutoModelForCausalLM.from_pretrained(prep.full, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}

    def known() -> dict[str, float]:
        ctx = realfacts_context(model, tokenizer, bench, dp=ONE_PROCESS, splits=SPLITS)
        shares = {}
        for split in SPLITS:
            by_fact = known_by_index(ctx, split)
            shares[split] = round(sum(v["known"] for v in by_fact.values()) / len(by_fact), 3)
        return shares

    results = []
    for spec, (kind, opts) in zip(args.directions, specs):
        t0 = time.perf_counter()
        if kind == "r2f":
            direction, info = r2f_direction(prep, cfg, opts, args.out / "runs" / f"r2f-{len(results)}")
        else:
            direction, info = exact_direction(model, tokenizer, template_for(tokenizer), bench, opts)
        if kind == "exact" and int(opts.get("steps", 1)) > 1:
            results.append(iterated_exact(model, tokenizer, template_for(tokenizer), bench, opts, spec, etas, known))
            (args.out / "specificity.json").write_text(json.dumps({"request": args.request, "rows": results}, indent=1))
            continue
        row = {"direction": spec, **info, "by_eta": {}}
        for eta in etas:
            with torch.no_grad():
                for n, d in direction.items():
                    params[n].copy_(start[n] - eta * d.to(params[n].dtype))
            row["by_eta"][str(eta)] = known()
            print(spec, eta, row["by_eta"][str(eta)], f"{time.perf_counter() - t0:.0f} s", flush=True)
        with torch.no_grad():
            for n in direction:
                params[n].copy_(start[n])
        del direction
        results.append(row)
        (args.out / "specificity.json").write_text(json.dumps({"request": args.request, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
