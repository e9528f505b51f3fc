"""Closed-form reconstruction of a weight gradient G (m × n) from its two probe sketches.

Notation (SPEC §1): Y = ∇B/s = G Aᵀ (m × r_A), W = ∇A/s = Bᵀ G (r_B × n),
B⁺ = B(BᵀB)⁻¹ (m × r_B), A⁺ = (AAᵀ)⁻¹A (r_A × n), P_B = B B⁺ᵀ... written as B⁺Bᵀ, P_A = AᵀA⁺.

Every estimate here is returned in its *consistency-completed* form

    Ĝ = Ĝ_LS + (I − P_B) H (I − P_A),     Ĝ_LS = B⁺W + U A⁺,  U = (I − P_B) Y,

i.e. the observed part P_B G + G P_A − P_B G P_A is copied from the sketches and an estimator H only fills
the unobserved block. This reproduces both sketches exactly and can only lower the Frobenius error of H.
For estimates of the form H = Y K (K: r_A × n) the unobserved block is U·(K − K Aᵀ A⁺), so everything stays
in factored (low-rank) form until the final m × n product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r2f.gradients.probe import Sketches

_EPS = 1e-12


def _sym_solve(m: torch.Tensor, rhs: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Solve M X = rhs for symmetric PSD M with a relative ridge, falling back to lstsq."""
    if ridge:
        m = m + ridge * (torch.trace(m) / m.shape[0]).clamp_min(_EPS) * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    try:
        return torch.linalg.solve(m, rhs)
    except RuntimeError:
        return torch.linalg.lstsq(m, rhs).solution


class ModuleAlgebra:
    """Shared pieces of every closed-form estimate for one module."""

    def __init__(self, sk: Sketches, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        a, b, s = sk.a.to(dtype), sk.b.to(dtype), float(sk.scale)
        self.a, self.b, self.s = a, b, s
        self.y = sk.grad_b.to(dtype) / s  # m x rA
        self.w = sk.grad_a.to(dtype) / s  # rB x n
        self.bp = _sym_solve(b.t() @ b, b.t()).t()  # m x rB  = B (BᵀB)^-1
        self.ap = _sym_solve(a @ a.t(), a)  # rA x n  = (AAᵀ)^-1 A
        self.u = self.y - self.bp @ (b.t() @ self.y)  # (I - P_B) Y
        self.sk = sk

    # --- observed part -------------------------------------------------------------------------
    def ls(self) -> torch.Tensor:
        return self.bp @ self.w + self.u @ self.ap

    def ls_norm2(self) -> float:
        n1 = torch.trace((self.bp.t() @ self.bp) @ (self.w @ self.w.t()))
        n2 = torch.trace((self.u.t() @ self.u) @ (self.ap @ self.ap.t()))
        return float(n1 + n2)

    def unobs_v(self, k: torch.Tensor) -> torch.Tensor:
        """V with (I−P_B) Y K (I−P_A) = U V."""
        return k - (k @ self.a.t()) @ self.ap

    def unobs_norm2(self, v: torch.Tensor, u: torch.Tensor | None = None) -> float:
        u = self.u if u is None else u
        return float(torch.trace((u.t() @ u) @ (v @ v.t())))

    # --- K-form estimators (Ĝ_raw = Y K) ------------------------------------------------------
    def k_sigma(self, a_sigma: torch.Tensor, trace: float, n: int, lam: float = 0.0, mu: float = 0.0) -> torch.Tensor:
        """Σ-weighted LS, K = (AΣ'Aᵀ)⁻¹AΣ' with Σ' = (1−λ)Σ + λ(trΣ/n)I + μ·trΣ·WᵀW/‖W‖².

        ``a_sigma`` = AΣ (r_A × n). λ shrinks towards isotropy (λ = 1 gives G P_A: no unobserved part);
        μ adds the row space observed by the left sketch (μ → ∞ gives the row-space two-sided sketch).
        """
        a = self.a
        asg = a_sigma.to(self.dtype) * (1.0 - lam) + (lam * trace / n) * a
        if mu:
            wn = float((self.w * self.w).sum())
            if wn > 0:
                aw = a @ self.w.t()  # rA x rB
                asg = asg + (mu * trace / wn) * (aw @ self.w)
        asa = asg @ a.t()
        asa = 0.5 * (asa + asa.t())
        return _sym_solve(asa, asg, ridge=1e-6)

    def k_rowsketch(self) -> torch.Tensor:
        """Two-sided sketch with the row space from ∇A: Q = orth(Wᵀ), Ĝ = Y ((AQ)ᵀ)⁺ Qᵀ."""
        q, _ = torch.linalg.qr(self.w.t())  # n x rB
        aq = self.a @ q  # rA x rB
        return torch.linalg.pinv(aq.t()) @ q.t()

    # --- Q-form estimator (SPEC §1 orientation) --------------------------------------------------
    def colsketch_uv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Tropp's Ĝ_sk = Q (BᵀQ)⁺ W with Q = orth(∇B), as factors (U2, V2) of its unobserved block.

        Q spans the *numerical* range of ∇B (singular values above a dtype-aware threshold), so that when
        rank(G) ≤ r_B the r_B-row co-range sketch ∇A over-determines the core and Ĝ_sk is exact; otherwise the
        min-norm core of SPEC §1 is used.
        """
        uq, sv, _ = torch.linalg.svd(self.y, full_matrices=False)
        tol = sv[0] * max(self.y.shape) * torch.finfo(self.y.dtype).eps * 10 if sv.numel() else 0.0
        keep = max(1, int((sv > tol).sum())) if sv.numel() and sv[0] > 0 else 1
        q = uq[:, :keep]
        z = torch.linalg.pinv(self.b.t() @ q) @ self.w  # rA x n
        u2 = q - self.bp @ (self.b.t() @ q)
        v2 = z - (z @ self.a.t()) @ self.ap
        return u2, v2

    # --- helpers for metrics ------------------------------------------------------------------------
    def unobserved(self, g: torch.Tensor) -> torch.Tensor:
        """(I − P_B) G (I − P_A) of any m × n matrix."""
        g = g.to(self.dtype)
        g = g - self.bp @ (self.b.t() @ g)
        return g - (g @ self.a.t()) @ self.ap


def sigma_inputs(sk: Sketches, stats, which: str) -> tuple[torch.Tensor, float] | None:
    """(AΣ, trΣ) from generic input statistics (``which='generic'``) or the batch's own forward statistic."""
    if which == "batch":
        if sk.a_sigma is None:
            return None
        return sk.a_sigma, float(sk.sigma_trace)
    if stats is None:
        return None
    sig = stats.get(sk.name)
    if sig is None:
        return None
    cache = getattr(stats, "_a_sigma_cache", None)
    if cache is None:
        cache = {}
        try:
            stats._a_sigma_cache = cache
        except AttributeError:
            pass
    key = (sk.name, tuple(sk.a.shape), float(sk.a.flatten()[0]))
    if key not in cache:
        cache[key] = (sk.a.float() @ sig.to(sk.a.device).float(), float(torch.trace(sig)))
    return cache[key]


@dataclass
class Fidelity:
    cos: float
    cos_unobserved: float
    rel_err: float
    resid_a: float
    resid_b: float


def fidelity_of(alg: ModuleAlgebra, g_hat: torch.Tensor, g: torch.Tensor) -> Fidelity:
    g = g.to(alg.dtype)
    g_hat = g_hat.to(alg.dtype)
    gn = float(g.norm())
    hn = float(g_hat.norm())
    cos = float((g * g_hat).sum()) / max(gn * hn, _EPS)
    ug, uh = alg.unobserved(g), alg.unobserved(g_hat)
    ugn, uhn = float(ug.norm()), float(uh.norm())
    cos_u = float((ug * uh).sum()) / (ugn * uhn) if ugn * uhn > _EPS else 0.0
    rel = float((g_hat - g).norm()) / max(gn, _EPS)
    ra = float((alg.b.t() @ g_hat - alg.w).norm()) / max(float(alg.w.norm()), _EPS)
    rb = float((g_hat @ alg.a.t() - alg.y).norm()) / max(float(alg.y.norm()), _EPS)
    return Fidelity(cos, cos_u, rel, ra, rb)
