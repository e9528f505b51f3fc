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


def _tr(x: torch.Tensor) -> torch.Tensor:
    """Trace over the last two dimensions (batched)."""
    return x.diagonal(dim1=-2, dim2=-1).sum(-1)


def _sym_solve(m: torch.Tensor, rhs: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Solve M X = rhs for symmetric PSD M (batched) with a relative ridge, falling back to least squares."""
    if ridge:
        k = m.shape[-1]
        scale = (_tr(m) / k).clamp_min(_EPS)[..., None, None]
        m = m + ridge * scale * torch.eye(k, dtype=m.dtype, device=m.device)
    try:
        return torch.linalg.solve(m, rhs)
    except RuntimeError:
        return torch.linalg.lstsq(m, rhs).solution


def low_rank(us: list[torch.Tensor], vs: list[torch.Tensor]) -> torch.Tensor:
    """Σ_i U_i V_i as one product [U_1 … U_k][V_1; …; V_k]: a single m × n write instead of k products and sums."""
    if len(us) == 1:
        return us[0] @ vs[0]
    return torch.cat(us, -1) @ torch.cat(vs, -2)


class FactorCache:
    """Pseudo-inverses of the probe factors, which are fixed for a probe: computed once per module, not per step."""

    def __init__(self, max_entries: int = 8192):
        self.max_entries = max_entries
        self._data: dict = {}

    def get(self, sk: Sketches, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = None if sk.factor_id is None else (sk.factor_id, dtype, sk.a.device)
        hit = self._data.get(key) if key is not None else None
        if hit is None:
            a, b = sk.a.to(dtype), sk.b.to(dtype)
            hit = (_sym_solve(b.t() @ b, b.t()).t(), _sym_solve(a @ a.t(), a))  # B(BᵀB)⁻¹, (AAᵀ)⁻¹A
            if key is not None:
                if len(self._data) >= self.max_entries:
                    self._data.clear()
                self._data[key] = hit
        return hit


FACTORS = FactorCache()


class ModuleAlgebra:
    """Shared pieces of every closed-form estimate for one module, or for a stack of same-shape modules.

    Built from one :class:`Sketches` every tensor is 2-D; :meth:`stack` builds it for N modules of one shape
    with a leading batch dimension, so the small solves and factorisations of a whole layer kind run as one
    batched call. Every method works on both.
    """

    def __init__(self, sk: Sketches, dtype: torch.dtype = torch.float32):
        self._fill([sk], dtype, batched=False)

    @classmethod
    def stack(cls, sks: list[Sketches], dtype: torch.dtype = torch.float32) -> "ModuleAlgebra":
        self = cls.__new__(cls)
        self._fill(sks, dtype, batched=True)
        return self

    def _fill(self, sks: list[Sketches], dtype: torch.dtype, batched: bool) -> None:
        def get(fn):
            parts = [fn(sk) for sk in sks]
            return torch.stack(parts) if batched else parts[0]

        self.dtype, self.batched = dtype, batched
        scale = get(lambda sk: torch.tensor(float(sk.scale), dtype=dtype, device=sk.a.device).reshape(1, 1))
        self.a = get(lambda sk: sk.a.to(dtype))
        self.b = get(lambda sk: sk.b.to(dtype))
        self.y = get(lambda sk: sk.grad_b.to(dtype)) / scale  # m x rA
        self.w = get(lambda sk: sk.grad_a.to(dtype)) / scale  # rB x n
        factors = [FACTORS.get(sk, dtype) for sk in sks]
        self.bp = torch.stack([f[0] for f in factors]) if batched else factors[0][0]  # m x rB = B (BᵀB)^-1
        self.ap = torch.stack([f[1] for f in factors]) if batched else factors[0][1]  # rA x n = (AAᵀ)^-1 A
        self.u = self.y - self.bp @ (self.b.mT @ self.y)  # (I - P_B) Y
        self.sk = sks if batched else sks[0]

    def select(self, i: int) -> "ModuleAlgebra":
        """Module ``i`` of a stack, as an un-batched algebra (views, no copies)."""
        out = ModuleAlgebra.__new__(ModuleAlgebra)
        out.dtype, out.batched = self.dtype, False
        for name in ("a", "b", "y", "w", "bp", "ap", "u"):
            setattr(out, name, getattr(self, name)[i])
        out.sk = self.sk[i]
        return out

    # --- observed part -------------------------------------------------------------------------
    def ls(self) -> torch.Tensor:
        return low_rank([self.bp, self.u], [self.w, self.ap])

    def ls_norm2(self) -> torch.Tensor:
        """‖Ĝ_LS‖² (a 0-d tensor, or one per module of a stack)."""
        n1 = _tr((self.bp.mT @ self.bp) @ (self.w @ self.w.mT))
        n2 = _tr((self.u.mT @ self.u) @ (self.ap @ self.ap.mT))
        return n1 + n2

    def unobs_v(self, k: torch.Tensor) -> torch.Tensor:
        """V with (I−P_B) Y K (I−P_A) = U V."""
        return k - (k @ self.a.mT) @ self.ap

    # --- K-form estimators (Ĝ_raw = Y K) ------------------------------------------------------
    def k_sigma(self, a_sigma: torch.Tensor, trace, n: int, lam: float = 0.0, mu: float = 0.0) -> torch.Tensor:
        """Σ-weighted LS, K = (AΣ'Aᵀ)⁻¹AΣ' with Σ' = (1−λ)Σ + λ(trΣ/n)I + μ·trΣ·WᵀW/‖W‖².

        ``a_sigma`` = AΣ (r_A × n), ``trace`` = trΣ (a number, or one per module). λ shrinks towards isotropy
        (λ = 1 gives G P_A: no unobserved part); μ adds the row space observed by the left sketch (μ → ∞ gives
        the row-space two-sided sketch).
        """
        a = self.a
        tr = torch.as_tensor(trace, dtype=self.dtype, device=a.device)
        tr = tr.reshape(-1, 1, 1) if tr.dim() else tr
        asg = a_sigma.to(self.dtype) * (1.0 - lam) + (lam / n) * tr * a
        if mu:
            wn = (self.w * self.w).sum((-2, -1), keepdim=True)
            weight = torch.where(wn > 0, mu * tr / wn.clamp_min(_EPS), torch.zeros_like(wn))
            asg = asg + weight * ((a @ self.w.mT) @ self.w)
        asa = asg @ a.mT
        asa = 0.5 * (asa + asa.mT)
        return _sym_solve(asa, asg, ridge=1e-6)

    def k_rowsketch(self) -> torch.Tensor:
        """Two-sided sketch with the row space from ∇A: Q = orth(Wᵀ), Ĝ = Y ((AQ)ᵀ)⁺ Qᵀ."""
        q, _ = torch.linalg.qr(self.w.mT)  # n x rB
        aq = self.a @ q  # rA x rB
        return torch.linalg.pinv(aq.mT) @ q.mT

    # --- Q-form estimator (SPEC §1 orientation) --------------------------------------------------
    def colsketch_uv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Tropp's Ĝ_sk = Q (BᵀQ)⁺ W with Q = orth(∇B), as factors (U2, V2) of its unobserved block.

        Q spans the *numerical* range of ∇B (singular values above a dtype-aware threshold; the other columns
        of Q are zeroed, which leaves the pseudo-inverse unchanged), so that when rank(G) ≤ r_B the r_B-row
        co-range sketch ∇A over-determines the core and Ĝ_sk is exact; otherwise the min-norm core of SPEC §1.
        """
        uq, sv, _ = torch.linalg.svd(self.y, full_matrices=False)
        tol = sv[..., :1] * max(self.y.shape[-2:]) * torch.finfo(self.y.dtype).eps * 10
        keep = sv > tol
        keep[..., 0] = True
        q = uq * keep.unsqueeze(-2).to(uq.dtype)
        z = torch.linalg.pinv(self.b.mT @ q) @ self.w  # rA x n
        u2 = q - self.bp @ (self.b.mT @ q)
        v2 = z - (z @ self.a.mT) @ self.ap
        return u2, v2

    # --- helpers for metrics ------------------------------------------------------------------------
    def unobserved(self, g: torch.Tensor) -> torch.Tensor:
        """(I − P_B) G (I − P_A) of any m × n matrix."""
        g = g.to(self.dtype)
        g = g - self.bp @ (self.b.mT @ g)
        return g - (g @ self.a.mT) @ self.ap


def factor_key(sk: Sketches) -> tuple:
    """Identifies the probe factors of a module: what caches of factor-only quantities are keyed by."""
    return sk.factor_id or (sk.name, tuple(sk.a.shape), float(sk.a.flatten()[0]))


def stats_cache(stats) -> dict:
    """A dict kept on a statistics object, for values that depend only on it and on the fixed probe factors
    (a fresh, throw-away dict when the object takes no attributes)."""
    cache = getattr(stats, "_r2f_cache", None)
    if cache is None:
        cache = {}
        try:
            stats._r2f_cache = cache
        except AttributeError:
            pass
    return cache


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
    cache, key = stats_cache(stats), ("a_sigma", factor_key(sk))
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
