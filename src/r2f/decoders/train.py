"""Training the learned decoder on a proxy model, from the proxy author pool only."""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from r2f import distributed as dist
from r2f.data.batching import encode_views
from r2f.data.loader import load_split
from r2f.data.templates import encode_qa, template_for
from r2f.data.world import DOCUMENTS_DIR
from r2f.decoders.api import set_default_decoder
from r2f.decoders.learned import (
    BASES,
    KINDS,
    N_FEATURES,
    CoefNet,
    J,
    LADDER_RULE,
    LearnedDecoder,
    allowed_bases,
    base_coefficients,
    cosine_from_scalars,
    module_bases,
)
from r2f.distributed import ONE_PROCESS, DataParallel
from r2f.errors import R2FInputError
from r2f.gradients.probe import LossFn, ProbeConfig, Sketches, probe_gradients
from r2f.gradients.stats import collect_input_stats
from r2f.models.loading import load_model, model_fingerprint
from r2f.progress import progress
from r2f.threads import model_threads, threads_record

# --- data helpers --------------------------------------------------------------------------------


def view_batches_for(items: Sequence, tokenizer, k: int, template=None, max_length: int | None = 256) -> list[dict]:
    """K batches (one per view) of the same items: view v asks the v-th question view of each item
    (:func:`r2f.data.batching.encode_views`, the builder the unlearning methods use too)."""
    return encode_views(tokenizer, items, k, template, max_length)


def chunks(seq: Sequence, size: int) -> list[list]:
    return [list(seq[i : i + size]) for i in range(0, len(seq), size)]


def stats_batches(items: Sequence, tokenizer, batch_size: int = 16) -> list[dict]:
    template = template_for(tokenizer)
    return [encode_qa(tokenizer, [it.question for it in c], [it.answer for it in c], template) for c in chunks(items, batch_size)]


def as_ladder(proxy) -> list:
    """The proxies of a decoder's training: one proxy (a path, name or ``(model, tokenizer)`` pair) or a list of
    them (a ladder of shapes)."""
    if isinstance(proxy, (str, os.PathLike)):
        return [proxy]
    if isinstance(proxy, (tuple, list)) and len(proxy) == 2 and hasattr(proxy[0], "parameters"):
        return [proxy]
    ladder = list(proxy)
    if not ladder:
        raise R2FInputError("give at least one proxy model", source="--proxy")
    return ladder


def resolve_model(model_or_path):
    """(model, tokenizer, identity) from a path/name or a (model, tokenizer) pair."""
    if isinstance(model_or_path, (tuple, list)) and len(model_or_path) == 2:
        model, tok = model_or_path
        ident = getattr(getattr(model, "config", None), "_name_or_path", "") or f"<in-memory {type(model).__name__}>"
        return model, tok, {"name": str(ident), "fingerprint": None}
    model, tok = load_model(str(model_or_path))
    fp = None
    try:
        if Path(str(model_or_path)).is_dir():
            fp = model_fingerprint(str(model_or_path))
    except Exception:  # fingerprint is informative only
        fp = None
    return model, tok, {"name": str(model_or_path), "fingerprint": fp}


def items_hash(items: Sequence) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(it.model_dump_json().encode())
    return h.hexdigest()[:16]


# --- pair generation -------------------------------------------------------------------------------


def training_scalars(sketches: list[Sketches], stats=None, dtype=torch.float64,
                     access: str = "batch") -> dict[str, torch.Tensor]:
    """Per module: features, β_j = ⟨H̃_j, G⟩/‖Ĝ_LS‖², Gram of the normalised blocks, γ = ‖G‖/‖Ĝ_LS‖, mask
    (over the candidates the access mode allows)."""
    feats, betas, grams, gammas, masks, kinds = [], [], [], [], [], []
    for sk in sketches:
        if sk.exact is None:
            raise ValueError("training pairs need exact gradients")
        mb = module_bases(sk, stats, dtype, access)
        g = sk.exact.to(dtype)
        gn2 = float((g * g).sum())
        if mb.nl2 <= 0 or gn2 <= 0:
            continue
        ug = mb.alg.u.t() @ g  # rA x n
        beta = torch.zeros(J, dtype=torch.float64)
        mask = torch.zeros(J, dtype=torch.float64)
        for j, v in enumerate(mb.vs):
            if v is None or mb.norms2[j] <= 0:
                continue
            if isinstance(v, tuple):
                inner = float(((v[0].t() @ g) * v[1]).sum())
            else:
                inner = float((ug * v).sum())
            beta[j] = inner * mb.scaled(j) / mb.nl2
            mask[j] = 1.0
        feats.append(mb.features)
        betas.append(beta)
        grams.append(mb.gram)
        gammas.append(math.sqrt(gn2 / mb.nl2))
        masks.append(mask)
        kinds.append(KINDS.index(sk.kind if sk.kind in KINDS else "other"))
    return {
        "features": torch.stack(feats).float(),
        "beta": torch.stack(betas),
        "gram": torch.stack(grams),
        "gamma": torch.tensor(gammas, dtype=torch.float64),
        "mask": torch.stack(masks),
        "kind": torch.tensor(kinds),
    }


def _cat(parts: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def group_weights(group: torch.Tensor) -> torch.Tensor:
    """Per module, 1 / (number of groups × size of its group): a weighted sum with these is the mean over groups of
    each group's mean."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse].float())


def fit_coefnet(train: dict, *, steps: int = 1500, lr: float = 3e-3, hidden: int = 48, seed: int = 0,
                weight_decay: float = 1e-4, base: str | None = None, log=None) -> tuple[CoefNet, list[float]]:
    """Fit the coefficient network by 1 − cos per module; it learns a correction on top of the closed form
    ``base`` (the output layer starts at zero, so the untrained decoder *is* that closed form).

    The loss is the mean over modules, or, when ``train`` has a ``group`` label per module (a ladder: member ×
    short/long answers), the mean over groups of each group's mean, so that no member or regime outweighs the
    others by the number of modules it gives."""
    torch.manual_seed(seed)
    net = CoefNet(N_FEATURES, hidden, J)
    f = train["features"]
    net.mean.copy_(f.mean(0))
    net.std.copy_(f.std(0).clamp_min(1e-3))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    beta, gram, gamma, mask = (train[k].float() for k in ("beta", "gram", "gamma", "mask"))
    c_base = base_coefficients(f, base).float()
    weights = group_weights(train["group"]) if "group" in train else None
    losses = []
    for step in range(steps):
        c = net(f) + c_base
        cos = cosine_from_scalars(c, beta, gram, gamma, mask)
        loss = (1.0 - cos).mean() if weights is None else ((1.0 - cos) * weights).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log and step % 250 == 0:
            log(f"step {step}: loss {float(loss):.4f}")
    return net.eval(), losses


def scalar_fidelity(net: CoefNet | None, data: dict, base: str | None = None,
                    access: str = "batch") -> dict[str, float]:
    """Mean cos on precomputed scalars: ``ls``, each completed closed form the mode allows, and ``learned``
    (the network's correction on top of ``base``)."""
    beta, gram, gamma, mask = (data[k].float() for k in ("beta", "gram", "gamma", "mask"))
    out = {"ls": float((1.0 / gamma).mean())}
    for (name, *_rest), allowed in zip(BASES, allowed_bases(access)):
        if allowed:  # the completed closed form itself (coefficient ‖H_j‖/‖Ĝ_LS‖ on its normalised block)
            c = base_coefficients(data["features"], name).float() * mask
            out[name] = float(cosine_from_scalars(c, beta, gram, gamma, mask).mean())
    if net is not None:
        with torch.no_grad():
            c = net(data["features"]) + base_coefficients(data["features"], base).float()
            out["learned"] = float(cosine_from_scalars(c, beta, gram, gamma, mask).mean())
    return out


def best_mix_cosine(data: dict) -> torch.Tensor:
    """Per module, the highest cos(Ĝ, G) of any mix Ĝ_LS + Σ c_j H̃_j of the available candidates: the ceiling
    of every coefficient network over them, learned or not.

    cos(c) = (1 + cᵀβ) / (γ √(1 + cᵀMc)) (M the Gram of the normalised blocks) is largest at c = M⁺β, where it is
    √(1 + βᵀM⁺β) / γ (Cauchy–Schwarz on the vectors (1, M^½c) and (1, M^-½β))."""
    beta, gram, gamma, mask = (data[k].double() for k in ("beta", "gram", "gamma", "mask"))
    keep = mask[:, :, None] * mask[:, None, :]
    m = gram * keep
    b = beta * mask
    c = (torch.linalg.pinv(m, hermitian=True) @ b.unsqueeze(-1)).squeeze(-1)
    return (1.0 + (b * c).sum(-1)).clamp_min(0.0).sqrt() / gamma


def best_closed_form(data: dict, access: str) -> str:
    """The closed form of the mode (``ls`` or a completed candidate) with the highest mean cos on ``data``."""
    fid = scalar_fidelity(None, data, access=access)
    return max(fid, key=lambda name: fid[name])


def generate_pairs(
    model,
    tokenizer,
    items: Sequence,
    probe: ProbeConfig,
    *,
    views: int = 4,
    batch_items: int = 4,
    stats=None,
    access: str = "batch",
    loss_fn: LossFn | None = None,
    seeds: Sequence[int] = (0,),
    desc: str = "decoder pairs",
    dp: DataParallel = ONE_PROCESS,
) -> list[dict]:
    """One scalar record set per (probe seed, item batch).

    With an active ``dp`` (torchrun) the jobs are split round-robin over the ranks and gathered back in order:
    every rank ends with the same list as one process would compute."""
    out = []
    batches = chunks(items, batch_items)
    all_jobs = [(s, b) for s in seeds for b in batches]
    for s, b in progress(dp.share(all_jobs), desc=desc):
        cfg = ProbeConfig(rank=probe.rank, rank_a=probe.rank_a, seed=s, target_modules=probe.target_modules, scale=probe.scale)
        vb = view_batches_for(b, tokenizer, views)
        sks = probe_gradients(model, vb, cfg, loss_fn, with_exact=True, batch_stats=True)
        out.append(training_scalars(sks, stats, access=access))
    return dp.gather(out, len(all_jobs))


def label_groups(parts: list[dict], member: int, n_items: int, n_short: int, batch_items: int) -> None:
    """Label every module of one ladder member's training pairs with its group, ``2·member + long``.

    :func:`generate_pairs` gives one record per (probe seed, batch) in that order; a batch holding any item past
    the first ``n_short`` of the ``n_items`` (the biographies come last) is in the long-answer regime."""
    n_batches = math.ceil(n_items / batch_items)
    for k, part in enumerate(parts):
        long = ((k % n_batches) + 1) * batch_items > n_short
        part["group"] = torch.full((part["features"].shape[0],), 2 * member + int(long), dtype=torch.long)


@model_threads("proxy")
def train_decoder(
    proxy,
    data_dir: str | os.PathLike,
    rank: int = 16,
    out: str | os.PathLike | None = None,
    *,
    views: int = 4,
    seed: int = 0,
    rank_a: int | None = None,
    batch_items: int = 4,
    probe_seeds: int = 2,
    max_items: int | None = None,
    heldout_frac: float = 0.2,
    steps: int = 1500,
    hidden: int = 48,
    access: str = "batch",
    long_answers: bool = True,
    loss_fn: LossFn | None = None,
    log=None,
    set_default: bool = True,
) -> LearnedDecoder:
    """Train the R2F decoder on ``proxy`` (path, name or (model, tokenizer), or a list of them: a ladder) with the
    proxy author pool.

    Pairs (probe sketches, exact gradient) are generated from ``proxy.jsonl`` items through ``views``
    question views, under ``probe_seeds`` different probe draws (so the decoder does not memorise one
    draw); Σ statistics come from ``world_facts`` (generic facts, never the target's forget set).
    Items are split by author into train / held-out; the held-out fidelity is stored in the metadata.

    ``access`` (lora | stats | batch) limits the decoder to the candidates whose inputs that mode provides.
    The network learns a correction on top of the mode's best closed form on the training pairs; when the
    corrected decoder is worse than that closed form on the held-out pairs the correction is dropped (the
    decoder is then the closed form), so on the proxy's held-out pairs it is never worse than it.

    ``long_answers`` (default): also train on the proxy authors' biographies (``documents/proxy.jsonl``, when the
    world has them), pairs whose batches hold many more answer tokens than the probe's rank (split by the same
    authors). Without them the correction learned on short answers fell below its closed form on long answers.

    A **ladder** (several proxies of other widths and tokenizers, e.g. ``proxy``, ``proxy_wide`` and
    ``proxy_smoltok``): every member gives pairs from the same items (same author split), so the shape features
    of a target between the members' shapes lie inside the training range (docs/decoder.md §3.2). The network's
    loss then weighs each (member, short/long answers) group equally, whatever the number of modules it gives.

    With ``out``, the decoder is saved there and (``set_default``) becomes the default learned decoder of this
    machine (``--decoder learned``); benchmarks and experiments that train side decoders pass ``set_default=False``.
    """
    if rank < 1:
        raise R2FInputError("rank must be >= 1", source="--rank")
    if views < 1:
        raise R2FInputError("views must be >= 1", source="--views")
    allowed_bases(access)  # an unknown mode: exit 2 naming --access
    if out is not None and Path(out).is_dir():
        raise R2FInputError("--out is a directory; give a .safetensors file path", source=str(out))
    items = load_split(data_dir, "proxy")
    facts = load_split(data_dir, "world_facts")
    probe = ProbeConfig(rank=rank, rank_a=rank_a, seed=seed)
    ladder = as_ladder(proxy)
    t0 = time.perf_counter()
    # split by author (fallback: by position) into train / held-out
    authors = sorted({it.author or str(i) for i, it in enumerate(items)})
    g = torch.Generator().manual_seed(seed)
    perm = [authors[i] for i in torch.randperm(len(authors), generator=g).tolist()]
    n_held = max(1, int(round(heldout_frac * len(perm)))) if len(perm) > 1 else 0
    held_authors = set(perm[:n_held])
    tr_items = [it for i, it in enumerate(items) if (it.author or str(i)) not in held_authors]
    ho_items = [it for i, it in enumerate(items) if (it.author or str(i)) in held_authors]
    if max_items:
        tr_items = tr_items[:max_items]
        ho_items = ho_items[: max(1, max_items // 4)]
    n_long = 0
    n_short_train = len(tr_items)
    if long_answers and (Path(data_dir) / DOCUMENTS_DIR / "proxy.jsonl").is_file():
        bios = load_split(Path(data_dir) / DOCUMENTS_DIR, "proxy")  # after the QA items: batches of their own
        tr_items += [b for b in bios if b.author not in held_authors]
        ho_items += [b for b in bios if b.author in held_authors]
        n_long = len(bios)
    seeds = [seed + 1000 * i for i in range(max(1, probe_seeds))]
    dp = DataParallel.current()  # torchrun: pair generation (the expensive part) is split over the ranks
    train_parts, held_parts, idents = [], [], []
    for member in ladder:  # one model in memory at a time
        model, tok, ident = resolve_model(member)
        model.eval()
        idents.append(ident)
        stats = collect_input_stats(model, stats_batches(facts, tok), probe, source="world_facts") \
            if access != "lora" else None
        common = dict(views=views, batch_items=batch_items, stats=stats, access=access, loss_fn=loss_fn, dp=dp)
        parts = generate_pairs(model, tok, tr_items, probe, seeds=seeds, desc="decoder pairs (train)", **common)
        if len(ladder) > 1:
            label_groups(parts, len(idents) - 1, len(tr_items), n_short_train, batch_items)
        train_parts += parts
        if ho_items:
            held_parts += generate_pairs(model, tok, ho_items, probe, seeds=[seed + 7], desc="decoder pairs (held-out)", **common)
        del model
    train = _cat(train_parts)
    held = _cat(held_parts) if held_parts else None
    base = best_closed_form(train, access)
    net, losses = fit_coefnet(train, steps=steps, hidden=hidden, seed=seed, base=base, log=log)
    fid_held = scalar_fidelity(net, held, base, access) if held is not None else None
    correction = "kept"
    if fid_held is not None and fid_held["learned"] < fid_held[base]:
        # worse than its own starting point on authors it never saw: keep the closed form
        with torch.no_grad():
            net.net[-1].weight.zero_()
            net.net[-1].bias.zero_()
        correction = f"dropped (held-out cos {fid_held['learned']:.4f} < {base} {fid_held[base]:.4f})"
        fid_held = scalar_fidelity(net, held, base, access)
    fid_train = scalar_fidelity(net, train, base, access)
    kinds = sorted({KINDS[i] for i in train["kind"].tolist()} | {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    meta = {
        "probe": probe.to_dict(),
        "views": views,
        "batch_items": batch_items,
        "probe_seeds": seeds,
        "bases": [b[0] for b in BASES],
        "n_features": N_FEATURES,
        "access": access,
        "base": base,
        "correction": correction,
        "module_kinds": kinds,
        "module_kinds_seen": sorted({KINDS[i] for i in train["kind"].tolist()}),
        "proxy": idents[0],
        "ladder": idents,
        "data": {
            "dir": str(data_dir),
            "split": "proxy",
            "items_hash": items_hash(items),
            "n_train_items": len(tr_items),
            "n_heldout_items": len(ho_items),
            "stats_split": "world_facts",
            "long_answer_items": n_long,
        },
        "training": {"steps": steps, "hidden": hidden, "loss_first": losses[0], "loss_last": losses[-1], "n_modules_train": int(train["features"].shape[0]), "seconds": round(time.perf_counter() - t0, 2)},
        "fidelity_train": fid_train,
        "fidelity_heldout": fid_held,
        "loss": "1 - cos per module" + (f"; ladder groups weighed alike ({LADDER_RULE})" if len(ladder) > 1 else ""),
        "distributed": dist.describe(),
        "threads": threads_record(),
    }
    dec = LearnedDecoder(net, meta)
    if out is not None:
        if dist.is_main():  # every rank fitted the same network on the same gathered pairs
            dec.save(out)
            if set_default:
                set_default_decoder(out)
        dist.barrier()
        dec.source = str(out)
    return dec
