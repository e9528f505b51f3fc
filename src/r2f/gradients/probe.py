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
* Cost (issue 17): the probed modules that read one input tensor in a forward (q/k/v, gate/up) share their
  backward's two products with that input (:class:`_InputGroup`); the factors differ per module, so the
  multiply-adds are those of separate modules, but the activations are read once per product and group, in
  wider matrix products. The batch statistic is computed only when asked (``batch_stats``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import types
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from r2f.distributed import all_reduce_sum_, is_distributed
from r2f.errors import R2FInputError
from r2f.fsdp import is_sharded, scalar
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
#: How the K views' gradients combine (:class:`_Aggregator`).
VIEW_AGGREGATIONS = ("mean", "balanced", "momentum")
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
    # here: transformers (about 2 s to import) is only needed once a model is probed; r2f.decoders and
    # r2f.gradients are imported without it
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
    """y = x Wᵀ + b; the backward returns δW for x and leaves this module's two sketches in its :class:`ProbedModule`.

    The sketches do not travel as autograd gradients: the modules that read one input tensor in a forward (q, k
    and v read one normed hidden state; gate and up another) form an :class:`_InputGroup`, and their backward
    passes share the two products with that input — ``x Aᵀ`` for every member's right factor at once, and one
    ``[Bᵀδ_1 | … | Bᵀδ_k (| A x)]ᵀ x`` for every member's left sketch (and the batch statistic A·Σ_x when asked) —
    so the activations are read twice per group instead of twice per module, in wider products. The anchor is a
    scalar leaf that every probed call takes as input, so that ``autograd.grad(loss, anchor)`` runs the backward.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, anchor, pm, group, slot):
        ctx.save_for_backward(x, weight)  # through autograd's saved tensors: activation checkpointing still applies
        ctx.pm, ctx.group, ctx.slot = pm, group, slot
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        pm, group = ctx.pm, ctx.group
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        d2 = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        grad_w = d2.t() @ x2 if ctx.needs_input_grad[1] else None  # exact weight gradient also wanted (fidelity)
        xa = group.right(x2, ctx.slot)  # T x r_A: this member's columns of the group's one x [A_1; …; A_k]ᵀ
        pm.add_b((d2.t() @ xa) * pm.scale)  # right sketch: s · Σ_t δ_t (A x_t)ᵀ   (m x r_A)
        group.left(ctx.slot, d2 @ pm.b)  # left sketch s · Σ_t (Bᵀδ_t) x_tᵀ once every member's Bᵀδ is in
        return grad_x, grad_w, None, None, None, None, None  # the anchor needs no gradient: it only drives the pass


class _InputGroup:
    """The probed modules that read one input tensor in one forward pass, in call order (``slot``)."""

    def __init__(self, x: torch.Tensor, stats: bool):
        # which tensor the group's key (its id) stands for; a weak reference, so the group never keeps an activation
        # alive (activation checkpointing drops them) and a recycled id is seen as a new tensor
        self.xref = weakref.ref(x)
        self.stats = stats
        self.members: list[ProbedModule] = []
        self.x2: torch.Tensor | None = None
        self.xa: torch.Tensor | None = None
        self.offsets: list[int] = [0]
        self.db: dict[int, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def add(self, pm: "ProbedModule") -> int:
        self.members.append(pm)
        self.offsets.append(self.offsets[-1] + pm.a.shape[0])
        return len(self.members) - 1

    def right(self, x2: torch.Tensor, slot: int) -> torch.Tensor:
        if self.xa is None:  # first member's backward: one product for every member's A
            self.x2 = x2
            a = self.members[0].a if len(self.members) == 1 else torch.cat([pm.a for pm in self.members])
            self.xa = x2 @ a.t()
        return self.xa[:, self.offsets[slot]:self.offsets[slot + 1]]

    def left(self, slot: int, db: torch.Tensor) -> None:
        self.db[slot] = db
        if len(self.db) == len(self.members):
            self.flush()

    def flush(self) -> None:
        """The left sketches (and statistics) of every member whose backward ran; then the group is spent."""
        if not self.db:
            return
        slots = sorted(self.db)
        x2 = self.x2
        parts = [self.db[i] for i in slots]
        ntok = sq = None
        if self.stats:
            xa = self.xa
            # ‖x_t‖² per token by a norm reduction: no T × n temporary (x² was one per group and view)
            norms2 = torch.linalg.vector_norm(x2, dim=1, dtype=torch.promote_types(x2.dtype, torch.float32)).square()
            mask = self.mask
            if mask is not None and mask.numel() == x2.shape[0]:
                # weight the skinny factor, not x: padding tokens drop out without copying the activations
                w = mask.reshape(-1, 1).to(device=x2.device, dtype=xa.dtype)
                xa, ntok = xa * w, int(mask.sum())
                sq = float((norms2 * w.reshape(-1).float()).sum())
            else:
                ntok, sq = x2.shape[0], float(norms2.sum())
            parts.append(xa.to(parts[0].dtype))
        both = (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).t() @ x2
        row = 0
        for i in slots:
            pm = self.members[i]
            r_b = pm.b.shape[1]
            pm.add_a(both[row:row + r_b] * pm.scale)
            row += r_b
        if self.stats:
            for i, pm in enumerate(self.members):  # A·Σ_x (unnormalised) of every member, from the same product
                lo, hi = self.offsets[i], self.offsets[i + 1]
                pm.stats_items.append((both[row + lo:row + hi].float(), sq, ntok))
        self.db, self.xa, self.x2 = {}, None, None


@dataclass
class ProbedModule:
    name: str
    module: nn.Module  # nn.Linear or Conv1D
    a: torch.Tensor  # r_A x n (device/dtype of the weight)
    b: torch.Tensor  # m x r_B
    scale: float = 1.0
    kind: str = "other"
    depth: float = 0.0
    transposed: bool = False  # Conv1D: the parameter is Wᵀ (in × out)
    grad_a: torch.Tensor | None = None  # left sketch ∇A of the last backward (r_B x n), summed over calls
    grad_b: torch.Tensor | None = None  # right sketch ∇B (m x r_A)
    stats_items: list = field(default_factory=list)  # (A·Σ x xᵀ, Σ‖x‖², tokens) per call, when statistics are on

    @property
    def param_name(self) -> str:
        return f"{self.name}.weight"

    def add_a(self, g: torch.Tensor) -> None:
        self.grad_a = g if self.grad_a is None else self.grad_a + g

    def add_b(self, g: torch.Tensor) -> None:
        self.grad_b = g if self.grad_b is None else self.grad_b + g

    def take(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out = (self.grad_a, self.grad_b)
        self.grad_a = self.grad_b = None
        return out


@dataclass
class Probe:
    cfg: ProbeConfig
    modules: list[ProbedModule] = field(default_factory=list)
    anchor: torch.Tensor | None = None  # scalar leaf every probed call takes: autograd.grad(loss, anchor)
    batch_stats: bool = False
    mask: torch.Tensor | None = None  # attention mask of the batch in flight (the statistic skips padding)
    groups: dict[int, _InputGroup] = field(default_factory=dict)  # by id() of the input tensor, this forward

    def by_name(self) -> dict[str, ProbedModule]:
        return {p.name: p for p in self.modules}

    def group_for(self, x: torch.Tensor) -> _InputGroup:
        group = self.groups.get(id(x))
        if group is None or group.xref() is not x:
            group = self.groups[id(x)] = _InputGroup(x, self.batch_stats)
            group.mask = self.mask
        return group

    def finish_backward(self) -> None:
        """After a backward: left sketches of groups where some member's output did not reach the loss."""
        for group in self.groups.values():
            group.flush()
        self.groups.clear()


def _probe_forward(self_mod, x, _pm: ProbedModule, _probe: Probe):
    # Conv1D computes x W + b with W stored (in × out): its transposed view is the (out × in) matrix of F.linear
    weight = weight_matrix(self_mod)
    if not torch.is_grad_enabled():  # no backward will follow (a no_grad forward under the probe)
        return F.linear(x, weight, self_mod.bias)
    group = _probe.group_for(x)
    return _ProbeLinear.apply(x, weight, self_mod.bias, _probe.anchor, _pm, group, group.add(_pm))


def _cached_factors(mod: nn.Module, name: str, m: int, n: int, cfg: ProbeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's factors on its weight's device and dtype, drawn once per (probe, shape, device, dtype) and kept
    on the module itself (every unlearning step attaches the probe again; redrawing ~200 Gaussian matrices on
    SmolLM2 was a fixed cost per step). Not in the state dict: a plain attribute."""
    dev, dt = mod.weight.device, mod.weight.dtype
    key = (cfg.seed, cfg.r_a, cfg.r_b, name, m, n, str(dev), dt)
    cache = mod.__dict__.get("_r2f_probe_factors")
    if cache is None or cache[0] != key:
        a, b = probe_factors(name, m, n, cfg)
        cache = (key, a.to(dev, dt), b.to(dev, dt))
        mod.__dict__["_r2f_probe_factors"] = cache
    return cache[1], cache[2]


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
    dev0 = targets[0][1].weight.device
    probe = Probe(cfg, anchor=torch.zeros((), device=dev0, requires_grad=True), batch_stats=batch_stats)
    patched = []
    try:
        for p in params:
            p.requires_grad_(False)
        for name, mod in targets:
            m, n = weight_matrix(mod).shape
            a, b = _cached_factors(mod, name, m, n, cfg)
            pm = ProbedModule(name=name, module=mod, a=a, b=b, scale=cfg.scale, kind=module_kind(name),
                              depth=relative_depth(name, n_layers), transposed=is_transposed(mod))
            if exact:
                mod.weight.requires_grad_(True)
            mod.forward = types.MethodType(lambda self, x, _pm=pm, _pr=probe: _probe_forward(self, x, _pm, _pr), mod)
            patched.append(mod)
            probe.modules.append(pm)
        yield probe
    finally:
        for mod in patched:
            if "forward" in mod.__dict__:
                del mod.forward
        for p in params:
            p.requires_grad_(saved_flags[id(p)])
        probe.groups.clear()


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
    """How the views' gradients combine: ``mean``; ``balanced``, the mean of each view's gradient divided by its
    norm (a view the model already answers badly has a gradient hundreds of times larger than a view it knows
    by heart, and would otherwise set the direction alone); ``momentum`` (``ema``), an EMA over the views."""

    def __init__(self, how: str, n_views: int, beta: float = 0.5):
        if how not in VIEW_AGGREGATIONS + ("ema",):
            raise ValueError(f"unknown view aggregation {how!r} ({'|'.join(VIEW_AGGREGATIONS)})")
        self.how, self.n, self.beta, self.i = how, n_views, beta, 0

    def weight(self, v: int, norm: float | None = None) -> tuple[float, float]:
        """(decay of the running value, weight of view v); ``balanced`` needs the view's gradient ``norm``."""
        if self.how == "balanced":
            return 1.0, 1.0 / (self.n * max(float(norm), 1e-30))
        if self.how == "mean":
            return 1.0, 1.0 / self.n
        # EMA started at the first view: g = beta*g + (1-beta)*g_v, g_0 = g_0
        if v == 0:
            return 0.0, 1.0
        return self.beta, 1.0 - self.beta


def _global_norm(tensors: list[torch.Tensor]) -> float:
    """‖(t_1, …, t_k)‖ over every tensor, also over the shards of FSDP DTensors."""
    return sum(scalar(t.float().pow(2).sum()) for t in tensors) ** 0.5


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

    ``aggregate="mean"`` gives the sketches of mean_v loss(view_v); ``"balanced"`` those of mean_v g_v / ‖g_v‖
    (each view's sketches divided by their norm, which tracks ‖g_v‖: sketches are linear in G);
    ``"momentum"`` an EMA over the views
    in order (g ← β g + (1−β) g_v). Sketches are linear in G, so aggregating sketches equals sketching
    the aggregated gradient. ``with_exact=True`` also returns the exact G from the same backward passes.
    ``batch_stats=True`` also records the forward statistic A·Σ_x of the views' inputs (r_A × n, cost of
    one extra r_A-column product per layer), used by the Σ-prior decoders.
    ``reduce=True`` (data-parallel runs): ``view_batches`` are this rank's slices of global batches and
    ``loss_fn`` is this slice's contribution to the global loss (``r2f.distributed.DataParallel``); the
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
        leaves = [pr.anchor] + ([pm.module.weight for pm in pr.modules] if with_exact else [])
        k = len(pr.modules)
        for v, batch in enumerate(view_batches):
            pr.mask = batch.get("attention_mask") if batch_stats else None
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            pr.finish_backward()
            view_a, view_b = [], []
            for pm in pr.modules:
                ga, gb = pm.take()  # None: the module's output did not reach the loss
                view_a.append(torch.zeros(probe.r_b, pm.a.shape[1], device=pm.a.device, dtype=pm.a.dtype)
                              if ga is None else ga)
                view_b.append(torch.zeros(pm.b.shape[0], probe.r_a, device=pm.b.device, dtype=pm.b.dtype)
                              if gb is None else gb)
            view_g = [torch.zeros_like(pm.module.weight) if g is None else g for pm, g in
                      zip(pr.modules, grads[1:])] if with_exact else []
            norm = None
            if agg.how == "balanced":
                if reduce:  # the norm of the global batch's view: its sketches summed over ranks first
                    all_reduce_sum_(view_a + view_b + view_g)
                # sketches are linear in G, so their norm tracks the view's gradient norm; the probe's own
                # measure also when the exact G is computed alongside, so that ``with_exact`` changes no sketch
                norm = _global_norm(view_a + view_b)
            decay, w = agg.weight(v, norm)
            for i, pm in enumerate(pr.modules):
                acc_a[i] = _accumulate(acc_a[i], view_a[i], decay, w)
                acc_b[i] = _accumulate(acc_b[i], view_b[i], decay, w)
                if with_exact:
                    g = view_g[i]
                    acc_g[i] = _accumulate(acc_g[i], g.t() if pm.transposed else g, decay, w)  # G is m × n
            del grads, loss, view_a, view_b, view_g
        if reduce and agg.how != "balanced":
            all_reduce_sum_(acc_a + acc_b + (acc_g if with_exact else []))
        a_sig, a_tr = [None] * k, [None] * k
        if batch_stats:
            if reduce:
                _reduce_batch_stats(pr.modules)
            for i, pm in enumerate(pr.modules):
                items = pm.stats_items
                if items:
                    ntok = sum(t for _, _, t in items)
                    a_sig[i] = sum(s_ for s_, _, _ in items) / max(ntok, 1)
                    a_tr[i] = sum(t_ for _, t_, _ in items) / max(ntok, 1)
                pm.stats_items = []
            pr.mask = None
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
    if not is_distributed():
        return
    sums, scalars = [], []
    for pm in modules:
        items = pm.stats_items
        n = pm.a.shape[1]
        s_ = sum(x for x, _, _ in items) if items else torch.zeros(pm.a.shape[0], n, device=pm.a.device)
        sums.append(s_.float())
        scalars.append(torch.tensor([sum(t for _, t, _ in items), sum(c for _, _, c in items)], dtype=torch.float64,
                                    device=sums[-1].device))
    all_reduce_sum_(sums)
    all_reduce_sum_(scalars)
    for pm, s_, sc in zip(modules, sums, scalars):
        pm.stats_items = [(s_, float(sc[0]), int(sc[1]))] if sc[1] > 0 else []


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
            if agg.how == "balanced" and reduce and not sharded:
                grads = tuple(torch.zeros_like(mod.weight) if g is None else g for (_, mod), g in zip(targets, grads))
                all_reduce_sum_(list(grads))  # the global batch's view before its norm is taken
            norm = _global_norm([g for g in grads if g is not None]) if agg.how == "balanced" else None
            decay, wv = agg.weight(v, norm)
            for (name, mod), g in zip(targets, grads):
                g = torch.zeros_like(mod.weight) if g is None else g
                key = f"{name}.weight"
                out[key] = _accumulate(out.get(key), g, decay, wv)
            del grads, loss
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
    if reduce and not sharded and agg.how != "balanced":
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
