"""Relearning attack: a few fine-tuning steps on half of the forget split, forget metrics on the other half.

The model is deep-copied; the evaluated object (and any directory it came from) is never modified.
The split is interleaved (even positions train, odd positions evaluate) so that both halves cover the
same authors: the attack asks whether related facts bring the erased ones back.
"""

from __future__ import annotations

import copy

import torch

from r2f.data.templates import encode_qa
from r2f.progress import progress

#: Forget metrics reported before/after the attack (on the held-out half).
RELEARN_METRICS = ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_Truth_Ratio", "forget_quality", "extraction_strength", "exact_memorization")


def relearn_attack(ctx, *, steps: int, lr: float = 1e-4, batch_size: int = 8, seed: int = 0) -> dict:
    """``ctx``: the evaluation's ``r2f.eval.suite.EvalContext``; the halves are scored in contexts derived from it."""
    idx, items = ctx.indices("forget"), ctx.items("forget")
    train = [(i, it) for j, (i, it) in enumerate(zip(idx, items)) if j % 2 == 0]
    held = [(i, it) for j, (i, it) in enumerate(zip(idx, items)) if j % 2 == 1]
    if not held or not train:
        return {"steps": steps, "skipped": "forget split too small to halve"}

    def half_ctx(model):
        return ctx.derived(model, {"forget": ([i for i, _ in held], [it for _, it in held])})

    def summary(c):
        return {n: c.metric(n)["agg_value"] for n in RELEARN_METRICS}

    before = summary(half_ctx(ctx.model))

    attacked = copy.deepcopy(ctx.model)
    attacked.train()
    opt = torch.optim.AdamW([p for p in attacked.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    device = next(attacked.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    losses = []
    order: list[int] = []
    with torch.enable_grad():
        for _ in progress(range(steps), desc="relearn", total=steps):
            if len(order) < batch_size:
                order += torch.randperm(len(train), generator=gen).tolist()
            take, order = order[:batch_size], order[batch_size:]
            batch = encode_qa(ctx.tokenizer, [train[t][1].question for t in take], [train[t][1].answer for t in take], ctx.template)
            out = attacked(**{k: v.to(device) for k, v in batch.items()})
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            losses.append(float(out.loss.detach()))
    attacked.eval()
    after = summary(half_ctx(attacked))
    del attacked, opt
    return {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "train_indices": [i for i, _ in train],
        "eval_indices": [i for i, _ in held],
        "train_loss": losses,
        "before": before,
        "after": after,
    }
