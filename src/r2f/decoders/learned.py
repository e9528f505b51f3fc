"""The R2F learned decoder: a tiny shape-free network that mixes closed-form estimates of the unobserved block.

Design (ours; the paper's architecture is not available, see docs/decoder.md):

    Ĝ = Ĝ_LS + Σ_j c_j · (‖Ĝ_LS‖/‖H_j‖) · H_j ,     H_j = (I−P_B) Ĝ_j (I−P_A)

* Ĝ_LS holds everything the sketches observe, so Ĝ reproduces both sketches exactly;
* the H_j are the unobserved blocks of consistent closed-form estimators Ĝ_j: the two orientations of the
  two-sided sketch, the Σ-weighted least squares with Σ from generic text and from the views' own inputs,
  a shrunken Σ, and "hybrid" priors Σ + μ·(row space seen by ∇A) that interpolate between Σ and the sketch;
* the coefficients c (one per estimator) come from an MLP whose inputs are shape-free: module kind
  (one-hot), relative depth, log(r/n), log(r/m), and observable agreement statistics (cosines between
  the candidate blocks, their norms relative to ‖Ĝ_LS‖, stable ranks of the sketches, the share of the
  doubly observed block). Nothing depends on m, n, depth count or vocabulary, so a decoder trained on a
  narrow, shallow proxy runs on a wider, deeper target;
* loss = 1 − cos(Ĝ, G) per module: an unlearning step uses the direction, the step-size rule sets the scale.
  Because the H_j are orthogonal to Ĝ_LS, cos depends on c only through a few scalars per module
  (⟨H_j, G⟩, ⟨H_j, H_k⟩, ‖G‖), which are precomputed once; training is then seconds on CPU.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from r2f.decoders.algebra import ModuleAlgebra, sigma_inputs
from r2f.decoders.base import Decoder, check_probe_meta
from r2f.errors import R2FInputError
from r2f.gradients.probe import MODULE_KINDS, ProbeConfig, Sketches
from r2f.io import atomic_file, write_json_atomic

FORMAT_VERSION = 1
KINDS = MODULE_KINDS + ("other",)

#: The candidate estimators (name, source of Σ, shrinkage λ, hybrid weight μ); "row"/"col" are the sketches.
BASES: tuple[tuple[str, str, float, float], ...] = (
    ("sketch_row", "", 0.0, 0.0),
    ("sketch_col", "", 0.0, 0.0),
    ("sigma_gen", "generic", 0.01, 0.0),
    ("sigma_gen_shrink", "generic", 0.3, 0.0),
    ("sigma_batch", "batch", 0.01, 0.0),
    ("hybrid_batch", "batch", 0.01, 1.0),
    ("hybrid_gen", "generic", 0.01, 1.0),
)
J = len(BASES)
N_FEATURES = len(KINDS) + 1 + 2 + 3 + J + J * (J - 1) // 2


@dataclass
class ModuleBases:
    """Factored candidate blocks of one module and its shape-free features."""

    alg: ModuleAlgebra
    nl2: float  # ‖Ĝ_LS‖²
    vs: list  # per basis: V (r_A × n) paired with U, or (U2, V2), or None when unavailable
    norms2: list[float]
    gram: torch.Tensor  # J x J inner products of the normalised blocks / nl2 (cosines)
    features: torch.Tensor  # N_FEATURES

    def scaled(self, j: int) -> float:
        n2 = self.norms2[j]
        return math.sqrt(self.nl2 / n2) if n2 > 0 and self.nl2 > 0 else 0.0


def _pair_inner(alg: ModuleAlgebra, vj, vk) -> float:
    uj, vj_ = (alg.u, vj) if not isinstance(vj, tuple) else vj
    uk, vk_ = (alg.u, vk) if not isinstance(vk, tuple) else vk
    return float(torch.trace((uj.t() @ uk) @ (vk_ @ vj_.t())))


def _stable_rank(x: torch.Tensor) -> float:
    fro2 = float((x * x).sum())
    if fro2 <= 0:
        return 0.0
    top = float(torch.linalg.matrix_norm(x, ord=2)) ** 2
    return fro2 / max(top, 1e-30)


def module_bases(sk: Sketches, stats=None, dtype=torch.float32) -> ModuleBases:
    alg = ModuleAlgebra(sk, dtype)
    m, n = sk.shape
    nl2 = alg.ls_norm2()
    vs, norms2 = [], []
    for name, src, lam, mu in BASES:
        v = None
        try:
            if name == "sketch_row":
                v = alg.unobs_v(alg.k_rowsketch())
            elif name == "sketch_col":
                v = alg.colsketch_uv()
            else:
                got = sigma_inputs(sk, stats, src)
                if got is not None:
                    v = alg.unobs_v(alg.k_sigma(got[0], got[1], n, lam=lam, mu=mu))
        except RuntimeError:
            v = None
        if v is not None and not all(torch.isfinite(t).all() for t in (v if isinstance(v, tuple) else (v,))):
            v = None
        n2 = 0.0 if v is None else _pair_inner(alg, v, v)
        vs.append(v)
        norms2.append(max(n2, 0.0))
    gram = torch.zeros(J, J, dtype=torch.float64)
    scale = [math.sqrt(1.0 / n2) if n2 > 0 else 0.0 for n2 in norms2]
    for j in range(J):
        for k in range(j, J):
            if vs[j] is None or vs[k] is None:
                val = 1.0 if j == k else 0.0
            elif j == k:
                val = 1.0
            else:
                val = _pair_inner(alg, vs[j], vs[k]) * scale[j] * scale[k]
            gram[j, k] = gram[k, j] = val
    # features
    f = torch.zeros(N_FEATURES, dtype=torch.float32)
    f[KINDS.index(sk.kind if sk.kind in KINDS else "other")] = 1.0
    i = len(KINDS)
    f[i] = float(sk.depth)
    f[i + 1] = math.log(sk.a.shape[0] / n)
    f[i + 2] = math.log(sk.b.shape[1] / m)
    core = alg.b.t() @ alg.y  # rB x rA : BᵀGAᵀ
    dbl = float(torch.trace((alg.bp.t() @ alg.bp) @ core @ (alg.ap @ alg.ap.t()) @ core.t()))
    f[i + 3] = dbl / nl2 if nl2 > 0 else 0.0
    f[i + 4] = _stable_rank(alg.w) / alg.w.shape[0]
    f[i + 5] = _stable_rank(alg.y) / alg.y.shape[1]
    i += 6
    for j in range(J):
        f[i + j] = 0.5 * math.log(max(norms2[j], 1e-30) / max(nl2, 1e-30)) if norms2[j] > 0 else -10.0
    i += J
    iu = torch.triu_indices(J, J, 1)
    f[i:] = gram[iu[0], iu[1]].float()
    return ModuleBases(alg, nl2, vs, norms2, gram, f)


def assemble(mb: ModuleBases, coef: torch.Tensor) -> torch.Tensor:
    """Ĝ = B⁺W + U (A⁺ + Σ_Kform c̃_j V_j) + Σ_Qform c̃_j U2 V2."""
    alg = mb.alg
    vsum = alg.ap.clone()
    out = alg.bp @ alg.w
    for j, v in enumerate(mb.vs):
        if v is None:
            continue
        c = float(coef[j]) * mb.scaled(j)
        if c == 0.0:
            continue
        if isinstance(v, tuple):
            out = out + c * (v[0] @ v[1])
        else:
            vsum = vsum + c * v
    return out + alg.u @ vsum


class CoefNet(nn.Module):
    def __init__(self, n_in: int = N_FEATURES, hidden: int = 48, n_out: int = J):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net((f - self.mean) / self.std)


def cosine_from_scalars(c, beta, gram, gamma, mask):
    """cos(Ĝ, G) for Ĝ = Ĝ_LS + Σ c_j H̃_j, all normalised by ‖Ĝ_LS‖² (batched)."""
    c = c * mask
    num = 1.0 + (c * beta).sum(-1)
    den2 = 1.0 + torch.einsum("bj,bjk,bk->b", c, gram, c)
    return num / (gamma * den2.clamp_min(1e-12).sqrt())


class LearnedDecoder(Decoder):
    name = "learned"
    uses_stats = True

    def __init__(self, net: CoefNet, meta: dict, source: str = "<memory>", dtype=torch.float32):
        super().__init__(dtype)
        self.net = net.eval()
        self.meta = meta
        self.source = source

    def check_compatible(self, probe: ProbeConfig, kinds: set[str] | None = None) -> None:
        check_probe_meta(self.meta.get("probe", {}), probe, self.source)
        if kinds:
            known = set(self.meta.get("module_kinds", KINDS))
            unknown = sorted(set(kinds) - known)
            if unknown:
                raise R2FInputError(
                    f"decoder was trained on module kinds {sorted(known)}, not on {unknown}", source=self.source
                )

    @torch.no_grad()
    def coefficients(self, mb: ModuleBases) -> torch.Tensor:
        c = self.net(mb.features[None].to(torch.float32))[0].double()
        present = torch.tensor([0.0 if v is None else 1.0 for v in mb.vs], dtype=torch.float64)
        return c * present

    @torch.no_grad()
    def decode(self, sk: Sketches, stats=None) -> torch.Tensor:
        mb = module_bases(sk, stats, self.dtype)
        return assemble(mb, self.coefficients(mb))

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        meta = dict(self.meta)
        meta["format_version"] = FORMAT_VERSION
        meta["decoder"] = "learned"
        meta["hidden"] = self.net.net[0].out_features
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"r2f": json.dumps(meta, sort_keys=True)})
        if path.suffix != ".json":
            write_json_atomic(path.with_suffix(path.suffix + ".json"), meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LearnedDecoder":
        """Read a decoder file: safetensors only (never unpickles); metadata validated before anything is used."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise R2FInputError("decoder file not found", source=str(path))
        try:
            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get("r2f")
        except Exception as exc:  # safetensors raises its own error types
            raise R2FInputError(f"not a safetensors decoder file ({exc.__class__.__name__})", source=str(path)) from None
        if raw is None:
            raise R2FInputError("safetensors file has no r2f decoder metadata", source=str(path))
        meta = parse_decoder_meta(raw, source=str(path))
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        except Exception as exc:
            raise R2FInputError(f"unreadable decoder weights ({exc.__class__.__name__})", source=str(path)) from None
        bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
        if bad:
            raise R2FInputError(f"decoder weights contain NaN/Inf (tensor '{bad[0]}')", source=str(path))
        net = CoefNet(N_FEATURES, int(meta.get("hidden", 48)), J)
        try:
            net.load_state_dict(tensors)
        except RuntimeError as exc:
            raise R2FInputError(f"decoder weights do not match: {str(exc).splitlines()[0]}", source=str(path)) from None
        return cls(net, meta, source=str(path))


# ------------------------------------------------------------------------------ metadata schema
class ProbeMeta(BaseModel):
    """The probe a decoder was trained with (what ``ProbeConfig.to_dict`` writes)."""

    model_config = ConfigDict(extra="allow")

    rank: StrictInt = Field(ge=1, le=65536)
    rank_a: StrictInt = Field(ge=1, le=65536)
    seed: StrictInt = 0
    seed_rule: StrictStr
    target_modules: StrictStr = Field(min_length=1)
    scale: float = 1.0

    @field_validator("target_modules")
    @classmethod
    def _regex(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        return value

    @field_validator("scale")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError("must be a positive finite number")
        return value


class DecoderMeta(BaseModel):
    """The JSON metadata of a learned decoder file; validated before anything in the file is used."""

    model_config = ConfigDict(extra="allow")

    format_version: StrictInt
    decoder: Literal["learned"]
    hidden: StrictInt = Field(48, ge=1, le=4096)
    bases: list[StrictStr]
    n_features: StrictInt
    probe: ProbeMeta
    module_kinds: list[Literal[KINDS]] = Field(default_factory=lambda: list(KINDS), min_length=1)  # type: ignore[valid-type]


def parse_decoder_meta(raw: str | bytes, source: str = "<decoder>") -> dict:
    """Decoder metadata (JSON text) -> dict, or R2FInputError naming the field at fault (one line)."""
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise R2FInputError("decoder metadata is not valid JSON", source=source) from None
    if not isinstance(meta, dict):
        raise R2FInputError(f"decoder metadata must be a JSON object, got {type(meta).__name__}", source=source)
    if meta.get("format_version") != FORMAT_VERSION:
        raise R2FInputError(f"field 'format_version': unsupported decoder format {meta.get('format_version')!r} "
                            f"(this r2f reads {FORMAT_VERSION})", source=source)
    try:
        DecoderMeta.model_validate(meta)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "metadata"
        what = "missing" if err["type"] == "missing" else " ".join(str(err["msg"]).splitlines())
        raise R2FInputError(f"decoder metadata field '{field}': {what}", source=source) from None
    if meta["bases"] != [b[0] for b in BASES] or meta["n_features"] != N_FEATURES:
        raise R2FInputError("decoder metadata field 'bases': written by an incompatible r2f version "
                            "(bases/features differ)", source=source)
    return meta
