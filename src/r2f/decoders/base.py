"""The decoder interface and the closed-form decoders (``lora``, ``ls``, ``sketch``, ``sigma``, ``exact``)."""

from __future__ import annotations

from typing import Iterator

import torch

from r2f.decoders.algebra import ModuleAlgebra, low_rank, sigma_inputs
from r2f.errors import R2FInputError
from r2f.gradients.probe import SEED_RULE, ProbeConfig, Sketches


class Decoder:
    """Probe sketches of one module (+ optional statistics) → a full m × n gradient estimate.

    ``decode`` is called module by module (streaming), so at most one Ĝ needs to be alive at a time.
    """

    name: str = "base"
    needs_exact: bool = False  # the oracle: decoded_gradients computes exact gradients instead
    #: what the decoder reads besides ∇A, ∇B (r2f.decoders.learned.ACCESS_MODES): ``lora`` (nothing), ``stats``
    #: (Σ of the target on generic text), ``batch`` (also the batch's own activation statistics)
    access: str = "lora"
    #: sha256 of the file the decoder was read from, hashed from the bytes it was loaded from (one read of the file
    #: per run: the manifest records it); None for a built-in or in-memory decoder
    sha256: str | None = None

    @property
    def uses_stats(self) -> bool:
        """Whether the decoder reads forward statistics of the target (any mode but ``lora``)."""
        return self.access != "lora"

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype

    def check_compatible(self, probe: ProbeConfig, kinds: set[str] | None = None) -> None:
        """Raise R2FInputError when this decoder cannot be used with ``probe`` (closed forms: any probe)."""

    def decode(self, sk: Sketches, stats=None) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode_many(self, sketches: list[Sketches], stats=None) -> Iterator[tuple[Sketches, torch.Tensor]]:
        """(sketch, Ĝ) for every module, one m × n estimate alive at a time; decoders may batch the small
        per-module work across modules of one shape (the learned decoder does)."""
        for sk in sketches:
            yield sk, self.decode(sk, stats)

    def __repr__(self) -> str:
        return f"<decoder {self.name}>"


class LoraDecoder(Decoder):
    """What one step of LoRA training changes in W, to first order: s²(B·Bᵀ G + G·AᵀA) = s(B∇A + ∇B A)."""

    name = "lora"

    def decode(self, sk, stats=None):
        s = float(sk.scale)
        b, a = sk.b.to(self.dtype), sk.a.to(self.dtype)
        if b.shape[1] != sk.grad_a.shape[0] or a.shape[0] != sk.grad_b.shape[1]:
            raise ValueError("bad sketch shapes")
        # B ∇A uses B (m x rB) and ∇A (rB x n); ∇B A uses ∇B (m x rA) and A (rA x n)
        return s * (b @ sk.grad_a.to(self.dtype) + sk.grad_b.to(self.dtype) @ a)


class LSDecoder(Decoder):
    """Ĝ_LS = P_B G + G P_A − P_B G P_A (LoRA-Pro's equivalent gradient; minimum-norm consistent)."""

    name = "ls"

    def decode(self, sk, stats=None):
        return ModuleAlgebra(sk, self.dtype).ls()


class SketchDecoder(Decoder):
    """Two-sided sketch (Tropp et al. 2017) as written in SPEC §1, Q = orth(∇B), Ĝ_sk = Q (BᵀQ)⁺ ∇A / s,
    completed to consistency: Ĝ = Ĝ_LS + (I−P_B) Ĝ_sk (I−P_A) (reproduces both sketches; never worse
    in Frobenius error than the raw Ĝ_sk)."""

    name = "sketch"

    def decode(self, sk, stats=None):
        alg = ModuleAlgebra(sk, self.dtype)
        u2, v2 = alg.colsketch_uv()
        return low_rank([alg.bp, alg.u, u2], [alg.w, alg.ap, v2])


class RowSketchDecoder(Decoder):
    """The transposed two-sided sketch: row space Q = orth(∇Aᵀ) from the r_B-row left sketch, then the
    r_A-column right sketch solved in least squares: Ĝ = (∇B/s)((AQ)ᵀ)⁺Qᵀ (oversampled the way Tropp's
    theory wants it when r_A > r_B), completed to consistency."""

    name = "sketch_row"

    def decode(self, sk, stats=None):
        alg = ModuleAlgebra(sk, self.dtype)
        return low_rank([alg.bp, alg.u], [alg.w, alg.ap + alg.unobs_v(alg.k_rowsketch())])


class SigmaDecoder(Decoder):
    """Σ-weighted least squares of SPEC §1 (consistent with both sketches):
    Ĝ_Σ = B(BᵀB)⁻¹∇A/s + (I−P_B)(∇B/s)(AΣAᵀ)⁻¹AΣ.

    Σ = E[x xᵀ] of the layer's inputs from ``stats`` (generic text, :func:`collect_input_stats`); when
    no statistics are given it uses the forward statistic of the views' own inputs recorded by the probe.
    """

    name = "sigma"
    access = "batch"  # Σ from generic text when given, else the batch's own statistic

    def __init__(self, dtype=torch.float32, ridge: float = 0.01):
        super().__init__(dtype)
        self.ridge = ridge

    def decode(self, sk, stats=None):
        alg = ModuleAlgebra(sk, self.dtype)
        src = sigma_inputs(sk, stats, "generic") or sigma_inputs(sk, stats, "batch")
        if src is None:
            return alg.ls()
        a_sig, tr = src
        k = alg.k_sigma(a_sig, tr, sk.a.shape[1], lam=self.ridge)
        return low_rank([alg.bp, alg.u], [alg.w, k])


class ExactDecoder(Decoder):
    """The oracle: the true gradient (only where it is computable)."""

    name = "exact"
    needs_exact = True

    def decode(self, sk, stats=None):
        if sk.exact is None:
            raise ValueError("the exact decoder needs exact gradients (probe_gradients(with_exact=True))")
        return sk.exact.to(self.dtype)


BUILTIN = {
    "lora": LoraDecoder,
    "ls": LSDecoder,
    "sketch": SketchDecoder,
    "sketch_row": RowSketchDecoder,
    "sigma": SigmaDecoder,
    "exact": ExactDecoder,
}


def check_probe_meta(meta_probe: dict, probe: ProbeConfig, source: str) -> None:
    """Refuse a decoder trained with another probe (rank, r_A, scale, seed rule, pattern)."""
    want = probe.to_dict()
    problems = []
    for key in ("rank", "rank_a", "seed_rule", "scale", "target_modules"):
        if key in meta_probe and meta_probe[key] != want[key]:
            problems.append(f"{key}={meta_probe[key]!r} (probe has {want[key]!r})")
    if meta_probe.get("seed_rule", SEED_RULE) != SEED_RULE:
        problems.append(f"unknown seed rule {meta_probe.get('seed_rule')!r}")
    if problems:
        raise R2FInputError(
            "decoder was trained for another probe: " + ", ".join(problems) + "; retrain it with r2f train-decoder",
            source=source,
        )
