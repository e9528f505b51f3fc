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

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

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
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

from r2f.decoders.algebra import ModuleAlgebra, factor_key, low_rank, sigma_inputs, stats_cache
from r2f.decoders.base import Decoder, check_probe_meta
from r2f.errors import R2FInputError
from r2f.gradients.probe import MODULE_KINDS, ProbeConfig, Sketches
from r2f.io import atomic_file, write_json_atomic
from r2f.typed import check_choice

FORMAT_VERSION = 1
KINDS = MODULE_KINDS + ("other",)
#: how train_decoder builds the decoder (part of cache keys: a change retrains cached decoders)
TRAINING_RULE = "correction-on-best-closed-form-v2-long-answers"
#: how a decoder on a ladder of several proxies weighs their pairs (part of such decoders' cache keys)
LADDER_RULE = "mean-over-member-and-regime-groups-v1"
#: log-norm feature of an unavailable candidate
_SENTINEL = -10.0

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

#: Access modes, each a superset of the previous: ``lora`` (only the probe gradients ∇A, ∇B: the black-box case),
#: ``stats`` (plus forward statistics Σ of the target on generic text), ``batch`` (plus the current batch's own
#: activations, the Σ_x the probe records).
ACCESS_MODES: tuple[str, ...] = ("lora", "stats", "batch")
#: What each candidate's Σ source needs ("" = the sketches alone).
_SOURCE_ACCESS = {"": "lora", "generic": "stats", "batch": "batch"}


def base_access(name: str) -> str:
    """The least access mode a candidate estimator needs."""
    return _SOURCE_ACCESS[next(src for base, src, _, _ in BASES if base == name)]


def allowed_bases(access: str) -> tuple[bool, ...]:
    """Per candidate of ``BASES``: whether the mode ``access`` provides its inputs."""
    check_choice("access mode", access, ACCESS_MODES, source="--access")
    level = ACCESS_MODES.index(access)
    return tuple(ACCESS_MODES.index(_SOURCE_ACCESS[src]) <= level for _, src, _, _ in BASES)
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


def _stable_rank(gram: torch.Tensor) -> torch.Tensor:
    """‖X‖_F² / ‖X‖_2² from the small Gram matrices XXᵀ or XᵀX (batched; 0 for X = 0; no SVD of X)."""
    gram = gram.double()
    fro2 = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    top = torch.linalg.eigvalsh(gram)[..., -1]
    return torch.where(fro2 > 0, fro2 / top.clamp_min(1e-30), torch.zeros_like(fro2))


def _sigma_candidate(alg: ModuleAlgebra, sks: list[Sketches], stats, src: str, lam: float, mu: float):
    """(V of the Σ-weighted estimator for every module, availability per module), or None if none has Σ."""
    got = [sigma_inputs(sk, stats, src) for sk in sks]
    have = torch.tensor([g is not None for g in got])
    if not bool(have.any()):
        return None
    n = sks[0].a.shape[1]
    # V for Σ from generic text without the sketch term depends on the fixed factor A only: computed once
    cache = stats_cache(stats) if src == "generic" and not mu else None
    keys = [("V", factor_key(sk), lam, alg.dtype) for sk in sks]
    if cache is not None and all(k in cache for k in keys):
        return torch.stack([cache[k] for k in keys]), have
    a_sig = torch.stack([g[0] if g is not None else sk.a for g, sk in zip(got, sks)])  # placeholder: Σ = I
    trace = [g[1] if g is not None else float(n) for g in got]
    v = alg.unobs_v(alg.k_sigma(a_sig, trace, n, lam=lam, mu=mu))
    if cache is not None and bool(have.all()):
        cache.update(zip(keys, v))
    return v, have


def _candidates(alg: ModuleAlgebra, sks: list[Sketches], stats, access: str = "batch") -> list:
    """Per basis: None, (V: N×r_A×n, have), or ((U2, V2), have) — the unobserved blocks in factored form.
    Candidates whose inputs the access mode does not provide are None."""
    out = []
    all_have = torch.ones(len(sks), dtype=torch.bool)
    for (name, src, lam, mu), allowed in zip(BASES, allowed_bases(access)):
        try:
            if not allowed:
                out.append(None)
            elif name == "sketch_row":
                out.append((alg.unobs_v(alg.k_rowsketch()), all_have))
            elif name == "sketch_col":
                out.append((alg.colsketch_uv(), all_have))
            else:
                out.append(_sigma_candidate(alg, sks, stats, src, lam, mu))
        except RuntimeError:  # a factorisation failed: this estimator is unavailable for the group
            out.append(None)
    return out


def _inner_products(alg: ModuleAlgebra, cands: list) -> torch.Tensor:
    """N × J × J: ⟨U_j V_j, U_k V_k⟩ = ⟨(U_jᵀU_k) V_k, V_j⟩ for every module of the stack (zeros where missing).

    The K-form candidates share U = (I−P_B)Y, so their block needs only the r_A × r_A matrix UᵀU and one
    batched product; nothing of size m × n or (Σr)² × n is ever formed.
    """
    n_mod = alg.u.shape[0]
    out = torch.zeros(n_mod, J, J, dtype=torch.float64)
    kform = [j for j, c in enumerate(cands) if c is not None and not isinstance(c[0], tuple)]
    qform = [j for j, c in enumerate(cands) if c is not None and isinstance(c[0], tuple)]
    u = alg.u
    idx = torch.tensor(kform, dtype=torch.long)
    if kform:
        v = torch.stack([cands[j][0] for j in kform], 1)  # N x J' x r_A x n
        mv = (u.mT @ u).unsqueeze(1) @ v
        out[:, idx[:, None], idx[None, :]] = (v.flatten(2) @ mv.flatten(2).mT).double().cpu()
    for i, q in enumerate(qform):
        u2, v2 = cands[q][0]
        for q2 in qform[: i + 1]:
            u3, v3 = cands[q2][0]
            val = (((u3.mT @ u2) @ v2) * v3).sum((-2, -1)).double().cpu()
            out[:, q, q2] = val
            out[:, q2, q] = val
        if kform:
            cross = (v * ((u.mT @ u2) @ v2).unsqueeze(1)).flatten(2).sum(-1).double().cpu()
            out[:, idx, q] = cross
            out[:, q, idx] = cross
    return out


def _module_blocks(cands: list, i: int, present: torch.Tensor) -> list:
    """Module ``i``'s factored blocks (views into the stack), None where unavailable."""
    out = []
    for j, c in enumerate(cands):
        if c is None or not bool(present[i, j]):
            out.append(None)
        elif isinstance(c[0], tuple):
            out.append((c[0][0][i], c[0][1][i]))
        else:
            out.append(c[0][i])
    return out


def module_bases_stack(sks: list[Sketches], stats=None, dtype=torch.float32,
                       access: str = "batch") -> list[ModuleBases]:
    """:class:`ModuleBases` of N modules of one shape (same m, n, r_A, r_B), computed as one batch, with the
    candidates the access mode allows."""
    alg = ModuleAlgebra.stack(sks, dtype)
    m, n = sks[0].shape
    nl2 = alg.ls_norm2().double().cpu()
    cands = _candidates(alg, sks, stats, access)
    inner = _inner_products(alg, cands)
    diag = inner.diagonal(dim1=-2, dim2=-1)  # N x J
    have = torch.stack([c[1] if c is not None else torch.zeros(len(sks), dtype=torch.bool) for c in cands], 1)
    present = have & torch.isfinite(diag) & (diag > 0)  # a non-finite candidate is dropped
    inner = torch.where(present[:, :, None] & present[:, None, :], inner, torch.zeros_like(inner))
    norms2 = torch.where(present, diag, torch.zeros_like(diag))
    inv = torch.where(present, norms2.clamp_min(1e-300).rsqrt(), torch.zeros_like(norms2))
    gram = inner * inv[:, :, None] * inv[:, None, :]
    gram.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    # shape-free features (see the module docstring)
    core = alg.b.mT @ alg.y  # rB x rA : BᵀGAᵀ
    dbl = ((alg.bp.mT @ alg.bp) @ core @ (alg.ap @ alg.ap.mT) @ core.mT).diagonal(dim1=-2, dim2=-1).sum(-1)
    srank_w = _stable_rank(alg.w @ alg.w.mT) / alg.w.shape[-2]
    srank_y = _stable_rank(alg.y.mT @ alg.y) / alg.y.shape[-1]
    feats = torch.zeros(len(sks), N_FEATURES, dtype=torch.float32)
    for i, sk in enumerate(sks):
        feats[i, KINDS.index(sk.kind if sk.kind in KINDS else "other")] = 1.0
    k = len(KINDS)
    feats[:, k] = torch.tensor([float(sk.depth) for sk in sks])
    feats[:, k + 1] = math.log(sks[0].a.shape[0] / n)
    feats[:, k + 2] = math.log(sks[0].b.shape[1] / m)
    feats[:, k + 3] = torch.where(nl2 > 0, dbl.double().cpu() / nl2.clamp_min(1e-300), torch.zeros_like(nl2)).float()
    feats[:, k + 4] = srank_w.float().cpu()
    feats[:, k + 5] = srank_y.float().cpu()
    k += 6
    ratio = norms2.clamp_min(1e-30) / nl2.clamp_min(1e-30)[:, None]
    feats[:, k: k + J] = torch.where(present, 0.5 * ratio.log(), torch.full_like(ratio, _SENTINEL)).float()
    iu = torch.triu_indices(J, J, 1)
    feats[:, k + J:] = gram[:, iu[0], iu[1]].float()
    return [ModuleBases(alg.select(i), float(nl2[i]), _module_blocks(cands, i, present),
                        [float(x) for x in norms2[i]], gram[i], feats[i]) for i in range(len(sks))]


def module_bases(sk: Sketches, stats=None, dtype=torch.float32, access: str = "batch") -> ModuleBases:
    """:class:`ModuleBases` of one module."""
    return module_bases_stack([sk], stats, dtype, access)[0]


def base_coefficients(features: torch.Tensor, base: str | None) -> torch.Tensor:
    """N × J coefficients that reproduce the completed closed form ``base`` (zeros: ``ls``).

    The coefficient of a normalised block is ‖H_j‖/‖Ĝ_LS‖ = exp(feature), so Ĝ_LS + that·H̃_j = Ĝ_LS + H_j;
    an unavailable candidate (feature at the sentinel) gets 0, i.e. falls back to ``ls`` for that module.
    """
    c = torch.zeros(features.shape[0], J, dtype=torch.float64)
    if base is None or base == "ls":
        return c
    j = [b[0] for b in BASES].index(base)
    f = features[:, len(KINDS) + 6 + j].double()
    c[:, j] = torch.where(f > _SENTINEL + 1, f.exp(), torch.zeros_like(f))
    return c


def shape_groups(sketches: list[Sketches]) -> list[list[Sketches]]:
    """The sketches grouped by (m, n, r_A, r_B, device), in order of first appearance."""
    groups: dict[tuple, list[Sketches]] = {}
    for sk in sketches:
        key = (tuple(sk.a.shape), tuple(sk.b.shape), str(sk.a.device))
        groups.setdefault(key, []).append(sk)
    return list(groups.values())


def assemble(mb: ModuleBases, coef: torch.Tensor) -> torch.Tensor:
    """Ĝ = B⁺W + U (A⁺ + Σ_Kform c̃_j V_j) + Σ_Qform c̃_j U2 V2, as one low-rank product."""
    alg = mb.alg
    vsum = alg.ap
    us, vs = [alg.bp, alg.u], [alg.w, None]
    for j, v in enumerate(mb.vs):
        if v is None:
            continue
        c = float(coef[j]) * mb.scaled(j)
        if c == 0.0:
            continue
        if isinstance(v, tuple):
            us.append(c * v[0])
            vs.append(v[1])
        else:
            vsum = vsum + c * v
    vs[1] = vsum
    return low_rank(us, vs)


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
    """Ĝ = Ĝ_LS + Σ_j (c_base,j + c_net,j)·H̃_j over the candidates of the decoder's access mode.

    ``meta["access"]`` is the mode it was trained in (files without it were trained with every input:
    ``batch``); ``meta["base"]`` the closed form the network corrects (``ls`` or absent: Ĝ_LS).
    """

    name = "learned"

    def __init__(self, net: CoefNet, meta: dict, source: str = "<memory>", dtype=torch.float32):
        super().__init__(dtype)
        self.net = net.eval()
        self.meta = meta
        self.source = source
        self.access: str = meta.get("access", "batch")
        allowed_bases(self.access)  # validates the mode
        self.base: str | None = meta.get("base")

    def check_inputs(self, sketches: list[Sketches], stats) -> None:
        """Refuse to decode without the inputs the access mode needs (never a silent sentinel feature)."""
        if self.access in ("stats", "batch") and stats is None:
            raise R2FInputError(f"decoder access mode '{self.access}' needs forward statistics of the target on "
                                "generic text, and none were given (use a decoder trained with --access lora)",
                                source=self.source)
        if self.access == "batch" and any(sk.a_sigma is None for sk in sketches):
            raise R2FInputError("decoder access mode 'batch' needs the batch's own activation statistics, and the "
                                "probe recorded none (use a decoder trained with --access stats or lora)",
                                source=self.source)

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
    def coefficients(self, mbs: list[ModuleBases]) -> torch.Tensor:
        """N × J mixing coefficients (zero for unavailable candidates), one network call for all modules."""
        feats = torch.stack([mb.features for mb in mbs]).to(torch.float32)
        c = self.net(feats).double() + base_coefficients(feats, self.base)
        present = torch.tensor([[0.0 if v is None else 1.0 for v in mb.vs] for mb in mbs], dtype=torch.float64)
        return c * present

    @torch.no_grad()
    def decode(self, sk: Sketches, stats=None, bases: ModuleBases | None = None) -> torch.Tensor:
        """Ĝ of one module; ``bases`` (this module's :func:`module_bases` in this decoder's mode and dtype) may
        be passed in when several decoders of one mode decode the same module (fidelity tables)."""
        self.check_inputs([sk], stats)
        mb = bases if bases is not None else module_bases(sk, stats, self.dtype, self.access)
        return assemble(mb, self.coefficients([mb])[0])

    @torch.no_grad()
    def decode_many(self, sketches: list[Sketches], stats=None) -> Iterator[tuple[Sketches, torch.Tensor]]:
        """Decode modules a shape group at a time: the small solves of a group run batched; the m × n
        estimates are still formed (and yielded) one module at a time."""
        self.check_inputs(sketches, stats)
        for group in shape_groups(sketches):
            mbs = module_bases_stack(group, stats, self.dtype, self.access)
            coef = self.coefficients(mbs)
            for i, (sk, mb) in enumerate(zip(group, mbs)):
                yield sk, assemble(mb, coef[i])

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
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
        """Read a decoder file: safetensors only (never unpickles); metadata validated before anything is used.

        The file is read once: its metadata, its tensors and its sha256 (:attr:`sha256`, which the manifest
        records) all come from the same bytes."""
        path = Path(path)
        if not path.is_file():
            raise R2FInputError("decoder file not found", source=str(path))
        data = path.read_bytes()
        try:
            raw = (safetensors_metadata(data) or {}).get("r2f")
        except ValueError as exc:
            raise R2FInputError(f"not a safetensors decoder file ({exc})", source=str(path)) from None
        if raw is None:
            raise R2FInputError("safetensors file has no r2f decoder metadata", source=str(path))
        meta = parse_decoder_meta(raw, source=str(path))
        try:
            tensors = load_tensors(data)
        except Exception as exc:  # safetensors raises its own error types
            raise R2FInputError(f"unreadable decoder weights ({exc.__class__.__name__})", source=str(path)) from None
        bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
        if bad:
            raise R2FInputError(f"decoder weights contain NaN/Inf (tensor '{bad[0]}')", source=str(path))
        net = CoefNet(N_FEATURES, int(meta.get("hidden", 48)), J)
        try:
            net.load_state_dict(tensors)
        except RuntimeError as exc:
            raise R2FInputError(f"decoder weights do not match: {str(exc).splitlines()[0]}", source=str(path)) from None
        dec = cls(net, meta, source=str(path))
        dec.sha256 = hashlib.sha256(data).hexdigest()
        return dec


def safetensors_metadata(data: bytes) -> dict | None:
    """The ``__metadata__`` of a safetensors file's bytes (the format: an 8-byte little-endian header length, then
    the JSON header); ValueError when the bytes do not start with such a header."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length past the end of the file")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError("__metadata__ is not a JSON object")
    return meta


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
    access: Literal[ACCESS_MODES] = "batch"  # type: ignore[valid-type]
    base: Literal[("ls",) + tuple(b[0] for b in BASES)] | None = None  # type: ignore[valid-type]


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


def closed_form_candidate(base: str, access: str | None = None) -> LearnedDecoder:
    """The completed closed form ``base`` (one of ``BASES``) alone, as a decoder: a zero network on top of it.

    Used to tabulate every candidate of a mode next to the learned decoder (``r2f fidelity --access``).
    """
    access = access or base_access(base)
    meta = {"access": access, "base": base, "bases": [b[0] for b in BASES], "n_features": N_FEATURES}
    dec = LearnedDecoder(CoefNet(N_FEATURES, 1, J), meta, source=f"<{base}>")
    dec.name = base
    return dec
