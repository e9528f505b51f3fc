"""How the K question views of a forget set weigh in R2F's direction: per view, its answer NLL, the norm of its
exact gradient and that gradient's cosine to the original question's (docs/methods.md, "Views").

R2F's ``aggregate=mean`` averages the views' gradients. A model trained on the original questions knows them by
heart (NLL ≈ 0.003) and its paraphrases much less, so a paraphrase's gradient can be hundreds of times larger than the
original question's, and the original questions — which the stop rule, the line search and the evaluation read —
then barely enter the direction. Exact gradients (plain autograd) of the mean answer NLL over the probed Linear
weights, one view at a time: view 0 is the original question, view k ≥ 1 the k-th paraphrase of every item.

    python benchmarks/view_gradients.py --model MODEL_DIR --forget WORLD/forget10.jsonl
    python benchmarks/view_gradients.py --world WORLD            # the world's `small` full model, forget10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import add_record_flag, record, table  # noqa: E402


def view_gradients(model_dir: str, forget: Path, views: int = 4) -> list[dict]:
    import torch

    from r2f.data.loader import load_items
    from r2f.data.templates import encode_qa, template_for
    from r2f.gradients import target_linears
    from r2f.models.answer_nll import sequence_nll
    from r2f.models.loading import load_model

    model, tokenizer = load_model(model_dir)[:2]
    model.eval()
    items = load_items(forget)
    template = template_for(tokenizer)
    weights = [m.weight for _, m in target_linears(model)]

    def grad(questions: list[str]) -> tuple[torch.Tensor, float]:
        batch = encode_qa(tokenizer, questions, [it.answer for it in items], template)
        s, n = sequence_nll(model, batch)
        loss = (s / n.clamp_min(1)).mean()
        g = torch.autograd.grad(loss, weights)
        return torch.cat([x.flatten() for x in g]), float(loss.detach())

    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    g0, nll0 = grad([it.question for it in items])
    rows = [{"view": "original", "nll": nll0, "grad_norm": float(g0.norm()), "cos_to_original": 1.0}]
    for k in range(views - 1):
        g, nll = grad([it.paraphrased_question[k % len(it.paraphrased_question)] if it.paraphrased_question
                       else it.question for it in items])
        rows.append({"view": f"paraphrase {k + 1}", "nll": nll, "grad_norm": float(g.norm()),
                     "cos_to_original": float(g @ g0 / (g.norm() * g0.norm()).clamp_min(1e-30))})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the world's `small` full model, from the cache)")
    ap.add_argument("--forget", type=Path, help="forget QA file (default: WORLD/forget10.jsonl)")
    ap.add_argument("--world", type=Path, help="world directory (for the defaults of --model and --forget)")
    ap.add_argument("--views", type=int, default=4, help="views: the original question and views-1 paraphrases")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    add_record_flag(ap)
    args = ap.parse_args(argv)
    if args.model is None or args.forget is None:
        if args.world is None:
            ap.error("give --world, or both --model and --forget")
    model = args.model
    if model is None:
        from r2f.models.training import train_model

        model = str(train_model(args.world, size="small", split="full", forget="forget10", seed=0))
    forget = args.forget or args.world / "forget10.jsonl"
    rows = view_gradients(model, forget, args.views)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    body = table(["view", "answer NLL", "‖gradient‖", "cos to the original's"],
                 [[r["view"], f"{r['nll']:.4f}", f"{r['grad_norm']:.3g}", f"{r['cos_to_original']:.3f}"]
                  for r in rows])
    print(body)
    if not args.no_record:
        record("view_gradients", f"Views' gradients: {Path(model).name} on {forget.name}", body)


if __name__ == "__main__":
    main()
