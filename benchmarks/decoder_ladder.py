"""How the decoder's proxy ladder and its loss were chosen (decoder issue; docs/decoder.md §3.2).

Two steps. ``scalars`` computes the training scalars of one model on one split (features, β, Gram, γ per module:
what ``train_decoder`` fits the network on) and saves them; ``compare`` fits the network on saved members' scalars
in several ways and prints, per target, its gain in mean cos over the mode's best closed form on that target.

    W=WORLD; S=SCALARS_DIR
    python benchmarks/decoder_ladder.py scalars --world $W --model P0 --split proxy --seeds 0,1000 --access lora --out $S/p0_lora.safetensors
    python benchmarks/decoder_ladder.py scalars --world $W --model P0 --split $W/documents/proxy.jsonl --seeds 0,1000 --access lora --out $S/p0long_lora.safetensors
    ... the same for the members pw (proxy_wide) and pst (proxy_smoltok), then the targets at a probe seed no member saw:
    python benchmarks/decoder_ladder.py scalars --world $W --model SMALL --split forget10 --seeds 777 --access lora --out $S/small_lora.safetensors
    python benchmarks/decoder_ladder.py scalars --world $W --model SMALL --split $W/documents/retain90.jsonl --max-items 16 --seeds 777 --access lora --out $S/smallong_lora.safetensors
    python benchmarks/decoder_ladder.py scalars --world $W --model smollm2 --split forget10 --max-items 8 --seeds 777 --access lora --out $S/smolp_lora.safetensors
    python benchmarks/decoder_ladder.py compare --scalars $S --access lora --targets small,smallong,smolp

``ceiling`` prints, per target, the best mean cos any per-module mix of the mode's candidates can reach (the
coefficients an oracle who knows the true gradient would pick): no coefficient network can beat it.

``compare`` fits, on all of each member's pairs (short answers ``NAME`` and long answers ``NAMElong``): the proxy
alone, the ladder with the pooled loss (mean over modules) and the ladder with the grouped loss (mean over
member × regime groups, what ``train_decoder`` does on a ladder). Members and targets are the files' names.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def scalars(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from r2f.data.loader import load_items, load_split
    from r2f.decoders.train import _cat, generate_pairs, resolve_model, stats_batches
    from r2f.gradients.probe import ProbeConfig
    from r2f.gradients.stats import collect_input_stats

    items = load_items(args.split) if args.split.endswith(".jsonl") else load_split(args.world, args.split)
    if args.max_items:
        items = items[: args.max_items]
    model, tok, _ = resolve_model(args.model)
    model.eval()
    probe = ProbeConfig(rank=args.rank)
    stats = None
    if args.access != "lora":
        stats = collect_input_stats(model, stats_batches(load_split(args.world, "world_facts"), tok), probe,
                                    source="world_facts")
    parts = generate_pairs(model, tok, items, probe, views=args.views, batch_items=4, stats=stats,
                           access=args.access, seeds=[int(s) for s in args.seeds.split(",")])
    data = _cat(parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in data.items()}, str(args.out))
    print(args.out, {k: tuple(v.shape) for k, v in data.items()})


def compare(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file

    from r2f.decoders.train import _cat, best_closed_form, fit_coefnet, scalar_fidelity

    def load(name: str) -> dict:
        return load_file(str(args.scalars / f"{name}_{args.access}.safetensors"))

    members = args.members.split(",")
    targets = {t: load(t) for t in args.targets.split(",")}

    def group_of(member: int, regime: int, data: dict) -> dict:
        return data | {"group": torch.full((data["features"].shape[0],), 2 * member + regime, dtype=torch.long)}

    def fitted(names: list[str], grouped: bool) -> None:
        parts = [group_of(i, r, load(n + ("long" if r else ""))) for i, n in enumerate(names) for r in (0, 1)]
        train = _cat(parts)
        if not grouped:
            train.pop("group")
        base = best_closed_form(train, args.access)
        net, _ = fit_coefnet(train, base=base)
        gains = {}
        for t, data in targets.items():
            closed = scalar_fidelity(None, data, access=args.access)
            gains[t] = scalar_fidelity(net, data, base, args.access)["learned"] - max(closed.values())
        label = "+".join(names) + (", grouped loss" if grouped else ", pooled loss")
        print(f"{args.access:6s} {label:32s} base {base:13s} " + "  ".join(f"{t} {g:+.5f}" for t, g in gains.items()),
              flush=True)

    fitted(members[:1], grouped=False)
    fitted(members, grouped=False)
    fitted(members, grouped=True)


def ceiling(args: argparse.Namespace) -> None:
    """The best any per-module mix of the mode's candidates can do (``best_mix_cosine``: the coefficients an
    oracle who knows G would pick)."""
    from safetensors.torch import load_file

    from r2f.decoders.train import best_mix_cosine, scalar_fidelity

    for name in args.targets.split(","):
        data = load_file(str(args.scalars / f"{name}_{args.access}.safetensors"))
        best = max(scalar_fidelity(None, data, access=args.access).values())
        oracle = float(best_mix_cosine(data).mean())
        print(f"{args.access:6s} {name:10s} best closed form {best:.4f}  oracle mix {oracle:.4f}  "
              f"1 - cos ratio {(1 - oracle) / (1 - best):.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scalars", help="one model's training scalars on one split")
    s.add_argument("--world", required=True)
    s.add_argument("--model", required=True, help="a model directory or name (smollm2)")
    s.add_argument("--split", required=True, help="a split of the world or a JSONL file")
    s.add_argument("--access", default="lora", choices=("lora", "stats", "batch"))
    s.add_argument("--seeds", default="0,1000", help="probe seeds, comma-separated")
    s.add_argument("--max-items", type=int, default=0)
    s.add_argument("--rank", type=int, default=16)
    s.add_argument("--views", type=int, default=4)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="fit the network on members' scalars, report gains on targets")
    c.add_argument("--scalars", type=Path, required=True)
    c.add_argument("--access", default="lora", choices=("lora", "stats", "batch"))
    c.add_argument("--members", default="p0,pw,pst", help="scalar names of the members; the first alone is the baseline")
    c.add_argument("--targets", required=True, help="scalar names of the targets, comma-separated")
    o = sub.add_parser("ceiling", help="the best per-module mix of the mode's candidates (an oracle's) on targets")
    o.add_argument("--scalars", type=Path, required=True)
    o.add_argument("--access", default="lora", choices=("lora", "stats", "batch"))
    o.add_argument("--targets", required=True, help="scalar names of the targets, comma-separated")
    args = ap.parse_args(argv)
    {"scalars": scalars, "compare": compare, "ceiling": ceiling}[args.cmd](args)


if __name__ == "__main__":
    main()
