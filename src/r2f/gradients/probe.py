"""LoRA probes and exact gradients of the probed Linear layers.

A probe attaches, to every ``nn.Linear`` (or transformers' ``Conv1D``, GPT-2's projection layer, which stores
its weight transposed) whose qualified name matches a pattern, a pair of fixed random
factors ``A`` (r_A × n) and ``B`` (m × r_B) and a scale ``s``. It does **not** change the forward pass:
the layer still computes ``W x + b``. In the backward pass of each probed layer a custom autograd
function computes, from the output gradient δ_t and the input x_t of every token,

* ``grad_input = δ W`` (what the rest of the network needs),
* the right sketch ``∇B = s · Σ_t δ_t (A x_t)ᵀ = s · G Aᵀ``   (m × r_A),
* the left sketch  ``∇A = s · Σ_t (Bᵀ δ_t) x_tᵀ = s · Bᵀ G``  (r_B × n),

and never forms the m × n weight gradient ``G = Σ_t δ_t x_tᵀ`` (the weights do not require grad). With
``r_A == r_B`` these are exactly the gradients a PEFT LoRA adapter holding the same factors would get
on the model with ``W`` replaced by ``W − s·B·A`` (same outputs); see ``tests/test_gradients.py``.

Design decisions (ours, not the paper's):
* Oversampling: ``r_A = 2·r_B`` by default. The r_B-row left sketch ∇A gives a row-space basis of G, the
  wider right sketch ∇B is then solved in least squares against it (the two-sided sketch of Tropp et al.
  needs the second sketch to be the larger one).
* Factors are Gaussian, ``A ~ N(0, 1/n)``, ``B ~ N(0, 1/m)``, drawn on CPU in float32 from a generator
  seeded by ``sha256(f"{seed}:{module_name}")`` (seed rule ``"sha256-name-gaussian-v1"``): reproducible
  across devices and processes, independent between modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import types
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from r2f.errors import R2FInputError
from r2f.models.answer_nll import mean_answer_nll

#: Default target: the attention and MLP projections of the decoder blocks (lm_head excluded), under the names
#: each supported family gives them; docs/architectures.md lists what it finds per family.
DEFAULT_PATTERN = (
    r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"  # Llama, Qwen2, Mistral, Gemma(-2)
    r"|qkv_proj|gate_up_proj"  # Phi-3 (fused)
    r"|out_proj|fc1|fc2"  # OPT
    r"|c_attn|c_proj|c_fc"  # GPT-2 (Conv1D)
    r"|query_key_value|dense_h_to_4h|dense_4h_to_h|attention\.dense|self_attention\.dense)$"  # GPT-NeoX, Falcon
)
SEED_RULE = "sha256-name-gaussian-v1"
#: The roles a learned decoder knows (one-hot features): Llama's names for them.
MODULE_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Other families' projections, by name, mapped onto the Llama role that reads the same input and feeds the same
#: place (a decoder trained on the Llama-shaped proxy then accepts them). Fused q|k|v projections count as
#: ``q_proj``, fused gate|up as ``up_proj``: the closest single role (same input as q, resp. up); extending
#: MODULE_KINDS instead would change the decoder's feature vector and invalidate every trained decoder.
KIND_ALIASES = {
    "qkv_proj": "q_proj", "c_attn": "q_proj", "query_key_value": "q_proj",
    "out_proj": "o_proj",
    "gate_up_proj": "up_proj", "fc1": "up_proj", "c_fc": "up_proj", "dense_h_to_4h": "up_proj",
    "fc2": "down_proj", "dense_4h_to_h": "down_proj",
}
#: Output projections named alike in attention and MLP blocks (GPT-2 ``c_proj``, NeoX/Falcon ``dense``): the
#: parent block's name decides.
_BLOCK_OUTPUT_NAMES = ("c_proj", "dense")

LossFn = Callable[[nn.Module, dict], torch.Tensor]


@dataclass(frozen=True)
class ProbeConfig:
    """A LoRA probe: rank ``rank`` (= r_B, columns of B), ``rank_a`` rows of A (default 2·rank)."""

    rank: int = 16
    rank_a: int | None = None
    seed: int = 0
    target_modules: str = DEFAULT_PATTERN
    scale: float = 1.0

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError("probe rank must be >= 1")
        if self.rank_a is None:
            object.__setattr__(self, "rank_a", 2 * self.rank)
        if self.rank_a < 1:
            raise ValueError("probe rank_a must be >= 1")

    @property
    def r_a(self) -> int:
        return int(self.rank_a)

    @property
    def r_b(self) -> int:
        return int(self.rank)

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "rank_a": self.r_a,
            "seed": self.seed,
            "seed_rule": SEED_RULE,
            "target_modules": self.target_modules,
            "scale": self.scale,
        }


def module_kind(name: str) -> str:
    """The role of a probed module (one of MODULE_KINDS) from its qualified name; ``other`` when unknown."""
    parts = name.rsplit(".", 2)
    last = parts[-1]
    if last in MODULE_KINDS:
        return last
    if last in KIND_ALIASES:
        return KIND_ALIASES[last]
    if last in _BLOCK_OUTPUT_NAMES and len(parts) > 1:
        parent = parts[-2]
        if "attn" in parent or "attention" in parent:
            return "o_proj"
        if "mlp" in parent or "ffn" in parent or "feed_forward" in parent:
            return "down_proj"
    return "other"


def layer_index(name: str) -> int | None:
    m = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", "." + name + ".")
    return int(m.group(1)) if m else None


def _conv1d() -> type:
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def is_transposed(mod: nn.Module) -> bool:
    """Whether the module stores its weight as (in × out): transformers' ``Conv1D`` (GPT-2) computes x W + b."""
    return isinstance(mod, _conv1d())


def weight_matrix(mod: nn.Module) -> torch.Tensor:
    """The module's weight as the (out × in) matrix W of y = W x + b: a view, transposed for ``Conv1D``."""
    return mod.weight.t() if is_transposed(mod) else mod.weight


def to_weight_layout(mod: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """An (out × in) gradient or direction in the layout of ``mod.weight`` (what is added to the parameter)."""
    return g.t().contiguous() if is_transposed(mod) else g


def target_linears(model: nn.Module, pattern: str = DEFAULT_PATTERN) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every ``nn.Linear`` or ``Conv1D`` matching ``pattern`` (lm_head never).

    A matched leaf module of another type that holds a weight matrix (an embedding, a convolution, a custom
    fused or quantised layer) is bad input: R2FInputError naming the module and its type, rather than silently
    leaving that layer out of the update. Containers and layers without a weight matrix (norms) are skipped.
    """
    rx = re.compile(pattern)
    supported = (nn.Linear, _conv1d())
    out = []
    for name, mod in model.named_modules():
        if not name or not rx.search(name) or name.endswith("lm_head"):
            continue
        if isinstance(mod, supported):
            out.append((name, mod))
        elif next(mod.children(), None) is None and getattr(getattr(mod, "weight", None), "dim", lambda: 0)() >= 2:
            raise R2FInputError(f"module {name} is a {type(mod).__module__}.{type(mod).__name__}, which the probe "
                                "does not support (it probes torch.nn.Linear and transformers' Conv1D); narrow the "
                                "pattern to the model's linear projections", source="--option target_modules")
    return out


def relative_depth(name: str, n_layers: int) -> float:
    i = layer_index(name)
    if i is None or n_layers <= 1:
        return 0.5 if i is None else 0.0
    return i / (n_layers - 1)


def num_layers(names: list[str]) -> int:
    idx = [layer_index(n) for n in names]
    idx = [i for i in idx if i is not None]
    return (max(idx) + 1) if idx else 1


def _module_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def probe_factors(name: str, m: int, n: int, cfg: ProbeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic factors (A: r_A × n, B: m × r_B), float32 on CPU."""
    g = torch.Generator().manual_seed(_module_seed(cfg.seed, name))
    a = torch.randn(cfg.r_a, n, generator=g) / n**0.5
    b = torch.randn(m, cfg.r_b, generator=g) / m**0.5
    return a, b


class _ProbeLinear(torch.autograd.Function):
    """y = x Wᵀ + b; backward returns δW for x, and the two sketches as the grads of two dummy leaves.

    With a statistics box, the backward also records the forward statistic A·Σ_x of this call's inputs; it shares
    one product with the left sketch, [Bᵀδ | (A x)]ᵀ x, so the activations are read once for both.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scale, sink_a, sink_b, stats_box):
        ctx.save_for_backward(x, weight, a, b)
        ctx.scale, ctx.stats_box = scale, stats_box
        ctx.mask = stats_box.mask if stats_box is not None else None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, a, b = ctx.saved_tensors
        s, box = ctx.scale, ctx.stats_box
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight
        d2 = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[1]:  # exact weight gradient also wanted (fidelity / training pairs)
            grad_w = d2.t() @ x2
        xa = x2 @ a.t()  # T x r_A
        gsb = (d2.t() @ xa) * s  # right sketch: s * sum_t delta_t (A x_t)^T   (m x r_A)
        db = d2 @ b  # T x r_B
        if box is None:
            gsa = (db.t() @ x2) * s  # left sketch: s * sum_t (B^T delta_t) x_t^T  (r_B x n)
        else:
            gsa = _left_sketch_and_stats(db, xa, x2, ctx.mask, box) * s
        return grad_x, grad_w, None, None, None, None, gsa, gsb, None


def _left_sketch_and_stats(db: torch.Tensor, xa: torch.Tensor, x2: torch.Tensor, mask, box) -> torch.Tensor:
    """Bᵀ G (r_B × n), and A·Σ_t x_t x_tᵀ over the unmasked tokens appended to ``box``, from one product."""
    r_b = db.shape[1]
    xs = x2.float()
    if mask is not None and mask.numel() == x2.shape[0]:
        # weight the skinny factor, not x: padding tokens drop out without copying the activations
        w = mask.reshape(-1, 1).to(device=x2.device, dtype=xa.dtype)
        xa, ntok = xa * w, int(mask.sum())
        sq = float(((xs * xs).sum(1, keepdim=True) * w.float()).sum())
    else:
        ntok, sq = x2.shape[0], float((xs * xs).sum())
    both = torch.cat([db, xa.to(db.dtype)], 1).t() @ x2  # (r_B + r_A) x n
    box.items.append((both[r_b:].float(), sq, ntok))
    return both[:r_b]


@dataclass
class _StatsBox:
    mask: torch.Tensor | None = None
    items: list = field(default_factory=list)


@dataclass
class ProbedModule:
    name: str
    module: nn.Module  # nn.Linear or Conv1D
    a: torch.Tensor  # r_A x n (device/dtype of the weight)
    b: torch.Tensor  # m x r_B
    sink_a: torch.Tensor  # r_B x n leaf; its .grad-equivalent is the left sketch ∇A
    sink_b: torch.Tensor  # m x r_A leaf; the right sketch ∇B
    kind: str = "other"
    depth: float = 0.0
    stats_box: _StatsBox | None = None
    transposed: bool = False  # Conv1D: the parameter is Wᵀ (in × out)

    @property
    def param_name(self) -> str:
        return f"{self.name}.weight"


@dataclass
class Probe:
    cfg: ProbeConfig
    modules: list[ProbedModule] = field(default_factory=list)

    def by_name(self) -> dict[str, ProbedModule]:
        return {p.name: p for p in self.modules}


def _probe_forward(self_mod, x, _pm: ProbedModule, _s: float):
    # Conv1D computes x W + b with W stored (in × out): its transposed view is the (out × in) matrix of F.linear
    return _ProbeLinear.apply(x, weight_matrix(self_mod), self_mod.bias, _pm.a, _pm.b, _s, _pm.sink_a, _pm.sink_b,
                              _pm.stats_box)


@contextlib.contextmanager
def attach_probe(
    model: nn.Module, cfg: ProbeConfig, *, exact: bool = False, batch_stats: bool = False
) -> Iterator[Probe]:
    """Attach the probe to ``model`` for the duration of the block; always restores the model.

    Every parameter's ``requires_grad`` is turned off (restored afterwards); with ``exact=True`` the
    probed weights keep requiring grad so that one backward pass gives sketches *and* exact gradients.
    """
    targets = target_linears(model, cfg.target_modules)
    if not targets:
        raise ValueError(f"no nn.Linear or Conv1D matches the probe pattern {cfg.target_modules!r}")
    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    params = list(model.parameters())
    n_layers = num_layers([n for n, _ in targets])
    probe = Probe(cfg)
    patched = []
    try:
        for p in params:
            p.requires_grad_(False)
        for name, mod in targets:
            m, n = weight_matrix(mod).shape
            a, b = probe_factors(name, m, n, cfg)
            dev, dt = mod.weight.device, mod.weight.dtype
            pm = ProbedModule(
                name=name,
                module=mod,
                a=a.to(dev, dt),
                b=b.to(dev, dt),
                sink_a=torch.zeros(cfg.r_b, n, device=dev, dtype=dt, requires_grad=True),
                sink_b=torch.zeros(m, cfg.r_a, device=dev, dtype=dt, requires_grad=True),
                kind=module_kind(name),
                depth=relative_depth(name, n_layers),
                stats_box=_StatsBox() if batch_stats else None,
                transposed=is_transposed(mod),
            )
            if exact:
                mod.weight.requires_grad_(True)
            mod.forward = types.MethodType(lambda self, x, _pm=pm, _s=cfg.scale: _probe_forward(self, x, _pm, _s), mod)
            patched.append(mod)
            probe.modules.append(pm)
        yield probe
    finally:
        for mod in patched:
            if "forward" in mod.__dict__:
                del mod.forward
        for p in params:
            p.requires_grad_(saved_flags[id(p)])


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean (over sequences) of the per-sequence mean answer-token NLL."""
    return mean_answer_nll(model, batch)


@dataclass
class Sketches:
    """Aggregated probe gradients of one module (float32)."""

    name: str
    kind: str
    depth: float
    a: torch.Tensor  # r_A x n
    b: torch.Tensor  # m x r_B
    scale: float
    grad_a: torch.Tensor  # ∇A = s Bᵀ G  (r_B x n)
    grad_b: torch.Tensor  # ∇B = s G Aᵀ  (m x r_A)
    exact: torch.Tensor | None = None  # G (m x n, also for Conv1D) when requested
    a_sigma: torch.Tensor | None = None  # A Σ_x of this batch's inputs (r_A x n), forward statistic
    sigma_trace: float | None = None  # tr Σ_x
    factor_id: tuple | None = None  # identifies (A, B) exactly: decoders cache what depends on them only

    @property
    def shape(self) -> tuple[int, int]:
        return (self.b.shape[0], self.a.shape[1])

    @property
    def param_name(self) -> str:
        return f"{self.name}.weight"


class _Aggregator:
    def __init__(self, how: str, n_views: int, beta: float = 0.5):
        if how not in ("mean", "momentum", "ema"):
            raise ValueError(f"unknown view aggregation {how!r} (mean|momentum)")
        self.how, self.n, self.beta, self.i = how, n_views, beta, 0

    def weight(self, v: int) -> tuple[float, float]:
        """(decay of the running value, weight of view v)."""
        if self.how == "mean":
            return 1.0, 1.0 / self.n
        # EMA started at the first view: g = beta*g + (1-beta)*g_v, g_0 = g_0
        if v == 0:
            return 0.0, 1.0
        return self.beta, 1.0 - self.beta


def _accumulate(acc: torch.Tensor | None, g: torch.Tensor, decay: float, weight: float) -> torch.Tensor:
    """acc ← decay·acc + weight·g in float32, in place after the first view (no extra full-size temporaries)."""
    if acc is None:
        return g.float() * weight
    if decay != 1.0:
        acc.mul_(decay)
    return acc.add_(g.float(), alpha=weight)


def probe_gradients(
    model: nn.Module,
    view_batches: list[dict],
    probe: ProbeConfig,
    loss_fn: LossFn | None = None,
    *,
    aggregate: str = "mean",
    beta: float = 0.5,
    with_exact: bool = False,
    batch_stats: bool = True,
    reduce: bool = False,
) -> list[Sketches]:
    """Sketches (∇A, ∇B) of every probed module for the aggregated views' loss.

    ``aggregate="mean"`` gives the sketches of mean_v loss(view_v); ``"momentum"`` an EMA over the views
    in order (g ← β g + (1−β) g_v). Sketches are linear in G, so aggregating sketches equals sketching
    the aggregated gradient. ``with_exact=True`` also returns the exact G from the same backward passes.
    ``batch_stats=True`` also records the forward statistic A·Σ_x of the views' inputs (r_A × n, cost of
    one extra r_A-column product per layer), used by the Σ-prior decoders.
    ``reduce=True`` (data-parallel runs): ``view_batches`` are this rank's slices of global batches and
    ``loss_fn`` is this slice's contribution to the global loss (``r2f.distributed.data_parallel``); the
    sketches (and exact gradients) are summed over ranks and the batch statistic is averaged over every
    rank's tokens, so each rank gets the sketches of the global batch.
    """
    if not view_batches:
        raise ValueError("no view batches")
    loss_fn = loss_fn or default_loss
    agg = _Aggregator(aggregate, len(view_batches), beta)
    with attach_probe(model, probe, exact=with_exact, batch_stats=batch_stats) as pr:
        acc_a = [None] * len(pr.modules)
        acc_b = [None] * len(pr.modules)
        acc_g = [None] * len(pr.modules)
        leaves = [pm.sink_a for pm in pr.modules] + [pm.sink_b for pm in pr.modules]
        if with_exact:
            leaves += [pm.module.weight for pm in pr.modules]
        k = len(pr.modules)
        for v, batch in enumerate(view_batches):
            if batch_stats:
                for pm in pr.modules:
                    pm.stats_box.mask = batch.get("attention_mask")
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            decay, w = agg.weight(v)
            for i, pm in enumerate(pr.modules):
                ga, gb = grads[i], grads[k + i]
                ga = torch.zeros_like(pm.sink_a) if ga is None else ga
                gb = torch.zeros_like(pm.sink_b) if gb is None else gb
                acc_a[i] = _accumulate(acc_a[i], ga, decay, w)
                acc_b[i] = _accumulate(acc_b[i], gb, decay, w)
                if with_exact:
                    g = grads[2 * k + i]
                    g = torch.zeros_like(pm.module.weight) if g is None else g
                    acc_g[i] = _accumulate(acc_g[i], g.t() if pm.transposed else g, decay, w)  # G is m × n
            del grads, loss
        if reduce:
            from r2f.distributed import all_reduce_sum_

            all_reduce_sum_(acc_a + acc_b + (acc_g if with_exact else []))
        a_sig, a_tr = [None] * k, [None] * k
        if batch_stats:
            if reduce:
                _reduce_batch_stats(pr.modules)
            for i, pm in enumerate(pr.modules):
                items = pm.stats_box.items
                if items:
                    ntok = sum(t for _, _, t in items)
                    a_sig[i] = sum(s_ for s_, _, _ in items) / max(ntok, 1)
                    a_tr[i] = sum(t_ for _, t_, _ in items) / max(ntok, 1)
                pm.stats_box.items = []
                pm.stats_box.mask = None
        return [
            Sketches(
                name=pm.name,
                kind=pm.kind,
                depth=pm.depth,
                a=pm.a.float(),
                b=pm.b.float(),
                scale=probe.scale,
                grad_a=acc_a[i],
                grad_b=acc_b[i],
                exact=acc_g[i],
                a_sigma=a_sig[i],
                sigma_trace=a_tr[i],
                factor_id=(SEED_RULE, probe.seed, pm.name, probe.r_a, probe.r_b, (pm.b.shape[0], pm.a.shape[1])),
            )
            for i, pm in enumerate(pr.modules)
        ]


def _reduce_batch_stats(modules: list[ProbedModule]) -> None:
    """Replace each module's per-batch statistic items by one item summed over every rank."""
    from r2f.distributed import all_reduce_sum_, is_distributed

    if not is_distributed():
        return
    sums, scalars = [], []
    for pm in modules:
        items = pm.stats_box.items
        n = pm.a.shape[1]
        s_ = sum(x for x, _, _ in items) if items else torch.zeros(pm.a.shape[0], n, device=pm.a.device)
        sums.append(s_.float())
        scalars.append(torch.tensor([sum(t for _, t, _ in items), sum(c for _, _, c in items)], dtype=torch.float64,
                                    device=sums[-1].device))
    all_reduce_sum_(sums)
    all_reduce_sum_(scalars)
    for pm, s_, sc in zip(modules, sums, scalars):
        pm.stats_box.items = [(s_, float(sc[0]), int(sc[1]))] if sc[1] > 0 else []


def exact_gradients(
    model: nn.Module,
    view_batches: list[dict],
    loss_fn: LossFn | None = None,
    *,
    pattern: str = DEFAULT_PATTERN,
    aggregate: str = "mean",
    beta: float = 0.5,
    reduce: bool = False,
) -> dict[str, torch.Tensor]:
    """Exact gradients of the probed modules' weights (keyed by parameter name), plain autograd.

    Each gradient has its parameter's layout (in × out for ``Conv1D``), as decoded directions do.
    ``reduce=True``: summed over ranks, as in :func:`probe_gradients`."""
    if not view_batches:
        raise ValueError("no view batches")
    loss_fn = loss_fn or default_loss
    targets = target_linears(model, pattern)
    saved = {id(p): p.requires_grad for p in model.parameters()}
    agg = _Aggregator(aggregate, len(view_batches), beta)
    out: dict[str, torch.Tensor] = {}
    sharded = False
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        weights = [m.weight for _, m in targets]
        for w in weights:
            w.requires_grad_(True)
        from r2f.fsdp import is_sharded

        # FSDP: the forward uses unsharded copies of the weights, so autograd.grad w.r.t. the sharded parameters
        # would find them unused; a backward pass lets FSDP reduce-scatter each gradient into its shard (summed
        # over ranks: r2f.fsdp.shard_model), so the result is already the global batch's, one DTensor per weight
        sharded = any(is_sharded(w) for w in weights)
        for v, batch in enumerate(view_batches):
            loss = loss_fn(model, batch)
            if sharded:
                for w in weights:
                    w.grad = None
                loss.backward()
                grads = tuple(w.grad for w in weights)
                for w in weights:
                    w.grad = None
            else:
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
            decay, wv = agg.weight(v)
            for (name, mod), g in zip(targets, grads):
                g = torch.zeros_like(mod.weight) if g is None else g
                key = f"{name}.weight"
                out[key] = _accumulate(out.get(key), g, decay, wv)
            del grads, loss
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
    if reduce and not sharded:
        from r2f.distributed import all_reduce_sum_

        all_reduce_sum_(list(out.values()))
    return out


def activation_backward(model: nn.Module, view_batches: list[dict], loss_fn: LossFn | None = None) -> None:
    """Forward and backward through every layer without any weight gradient: the cost floor of any method that
    needs per-layer gradients (probe or exact), for cost reports. Returns nothing."""
    loss_fn = loss_fn or default_loss
    saved = {id(p): p.requires_grad for p in model.parameters()}
    box: list[torch.Tensor] = []

    def _leaf(_mod, _inp, out):
        out = out.detach().requires_grad_(True)
        box.append(out)
        return out

    handle = model.get_input_embeddings().register_forward_hook(_leaf)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for batch in view_batches:
            box.clear()
            loss = loss_fn(model, batch)
            torch.autograd.grad(loss, box[0])
    finally:
        handle.remove()
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
