"""Quadratic-model theory of loss-landscape stabilization (``docs/concepts.md``).

Notation (Kiselev & Grabovoy). At the trained point ``w*``, probing inside the
top-D eigenspace ``w = w* + U_D z`` with ``z ~ N(0, σ² I_D)``, the increment
``δ_k(w) = L_{k+1}(w) − L_k(w)`` is replaced by its quadratic surrogate

    q_k(z) = a_k + c_kᵀ z + ½ zᵀ B_k z,

and the squared criterion ``Δ₂^(D)(k+1) = E_z δ_k(w* + U_D z)²`` by the
surrogate's second moment. This module holds the closed forms around it, as
small pure functions:

- :func:`gaussian_moment` — GM, the exact ``E[q(z)²]``;
- :func:`spectral_closed_form` — GM with ``a = 0``, ``c = 0``, ``B = diag(δλ)``;
- :func:`rate_bound` — the ``O(1/(k+1)²)`` upper bound on ``Δ₂^(D)(k+1)``;
- :func:`extremal_index_set`, :func:`extremal_objective` — which D eigen-
  directions maximise the spectral closed form;
- :func:`empirical_slope` — the fitted log–log slope of a criterion in k.

Everything is float64. Tensor inputs may be any array-like (converted with
``torch.as_tensor``). Units: losses in the loss's unit ("loss"), σ and z in
parameter units ("param"): a in loss, c in loss/param, B in loss/param², GM in
loss². Bad input raises ``ValueError`` (never ``assert``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import stats
from torch import Tensor

__all__ = [
    "SlopeFit",
    "empirical_slope",
    "extremal_index_set",
    "extremal_objective",
    "gaussian_moment",
    "rate_bound",
    "spectral_closed_form",
]

SYMMETRY_RTOL = 1e-10
"""Largest accepted ``max|B − Bᵀ| / max|B|`` for a matrix called symmetric."""


# ----------------------------------------------------------------- validation
def _f64(x: ArrayLike | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")
    return t


def check_sigma(sigma: ArrayLike | Tensor) -> Tensor:
    """``σ`` as a float64 tensor; ``ValueError`` unless every ``σ`` is finite and ``> 0``."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
    return s


def check_symmetric(B: Tensor, name: str = "B", rtol: float = SYMMETRY_RTOL) -> None:
    """``ValueError`` unless ``B`` (..., D, D) is square and symmetric:
    ``max|B − Bᵀ| ≤ rtol · max|B|`` (each batch element on its own scale)."""
    if B.dim() < 2 or B.shape[-1] != B.shape[-2]:
        raise ValueError(f"{name} must be square (..., D, D), got shape {tuple(B.shape)}")
    if B.numel() == 0:
        return
    asym = (B - B.mT).abs().amax(dim=(-2, -1))
    scale = B.abs().amax(dim=(-2, -1))
    if bool((asym > rtol * scale).any()):
        worst = float((asym / scale.clamp_min(torch.finfo(B.dtype).tiny)).max())
        raise ValueError(
            f"{name} must be symmetric: max|{name} − {name}ᵀ| / max|{name}| = {worst:.3g} "
            f"> {rtol:g}"
        )


# ---------------------------------------------------------------- closed forms
def gaussian_moment(a: ArrayLike | Tensor, c: ArrayLike | Tensor, B: ArrayLike | Tensor,
                    sigma: ArrayLike | Tensor) -> Tensor:
    """Gaussian moment GM: the exact ``E[q(z)²]`` for ``z ~ N(0, σ² I_D)``.

    With ``q(z) = a + cᵀz + ½ zᵀBz`` and ``B`` symmetric,

        GM = a² + a σ² tr(B) + σ² ‖c‖² + (σ⁴/4) (2 tr(B²) + tr(B)²).

    (``E[cᵀz · zᵀBz] = 0`` by symmetry, ``E zᵀBz = σ² tr B`` and
    ``E (zᵀBz)² = σ⁴ (tr(B)² + 2 tr(B²))`` by Isserlis.) ``tr(B²)`` is computed
    as ``Σ_ij B_ij²``, which is non-negative in floating point too.

    Parameters
    ----------
    a : array_like (...,)
        Constant term a_k (loss).
    c : array_like (..., D)
        Linear term c_k (loss/param).
    B : array_like (..., D, D)
        Symmetric quadratic term B_k (loss/param²).
    sigma : scalar or array_like broadcastable to (...,)
        Probing scale σ > 0 (param).

    Returns
    -------
    Tensor (...,) float64
        GM in loss². Batch dims broadcast.
    """
    a, c, B = _f64(a, "a"), _f64(c, "c"), _f64(B, "B")
    s2 = check_sigma(sigma) ** 2
    check_symmetric(B)
    if c.dim() < 1 or c.shape[-1] != B.shape[-1]:
        raise ValueError(f"c must have shape (..., D) with D={B.shape[-1]}, got {tuple(c.shape)}")
    tr = torch.diagonal(B, dim1=-2, dim2=-1).sum(-1)
    tr_sq = (B * B).sum(dim=(-2, -1))
    return a * a + a * s2 * tr + s2 * (c * c).sum(-1) + (s2 * s2 / 4) * (2 * tr_sq + tr * tr)


def spectral_closed_form(delta_lambdas: ArrayLike | Tensor, sigma: ArrayLike | Tensor) -> Tensor:
    """Spectral closed form of ``Δ₂^(D)`` for stable principal directions.

    With a common eigenbasis, ``a = 0``, ``c = 0`` and ``B = diag(δλ)``,
    ``δλ_i = λ_i^(k+1) − λ_i^(k)`` (i = 1..D), GM reduces to

        Δ₂^(D) = (σ⁴/4) (2 Σ_i δλ_i² + (Σ_i δλ_i)²).

    Parameters
    ----------
    delta_lambdas : array_like (..., D)
        Eigenvalue increments δλ_i (loss/param²).
    sigma : scalar or array_like broadcastable to (...,)
        Probing scale σ > 0 (param).

    Returns
    -------
    Tensor (...,) float64
        ``Δ₂^(D)`` in loss².
    """
    d = _f64(delta_lambdas, "delta_lambdas")
    if d.dim() < 1:
        raise ValueError("delta_lambdas must have shape (..., D)")
    s2 = check_sigma(sigma) ** 2
    return (s2 * s2 / 4) * (2 * (d * d).sum(-1) + d.sum(-1) ** 2)


def rate_bound(M_l: float, M_g: float, M_H: float, sigma: float, D: int,
               k: ArrayLike | Tensor) -> Tensor:
    """Upper bound on ``Δ₂^(D)(k+1)`` for the quadratic model (Theorem).

        Δ₂^(D)(k+1) ≤ (12 M_ℓ² + 3 σ² M_g² + 3 σ⁴ (D² + 2D) M_H²) / (k+1)²

    where ``|ℓ_i(w*)| ≤ M_ℓ`` for all i ≤ k+1, ``‖g_{k+1} − g^(k)‖ ≤ M_g`` (the
    general projected gradient; ``‖g_{k+1}‖`` at a stationary point) and
    ``‖H_i(w*)‖₂ ≤ M_H``. Proof sketch: ``|a_k| ≤ 2M_ℓ/(k+1)``,
    ``‖c_k‖ ≤ M_g/(k+1)``, ``‖B_k‖₂ ≤ 2M_H/(k+1)``; then
    ``E q² ≤ 3(a² + E(cᵀz)² + ¼E(zᵀBz)²)`` and ``tr B² ≤ D‖B‖₂²``,
    ``(tr B)² ≤ D²‖B‖₂²``.

    Parameters
    ----------
    M_l : float ≥ 0
        Bound on the per-sample losses (loss).
    M_g : float ≥ 0
        Bound on the gradient difference (loss/param).
    M_H : float ≥ 0
        Bound on the per-sample Hessian norms (loss/param²).
    sigma : float > 0
        Probing scale (param).
    D : int ≥ 1
        Subspace dimension.
    k : int or array_like of ints ≥ 1
        Prefix sample counts.

    Returns
    -------
    Tensor float64
        The bound, with the shape of ``k`` (loss²).
    """
    for name, m in (("M_l", M_l), ("M_g", M_g), ("M_H", M_H)):
        if not (math.isfinite(float(m)) and float(m) >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {m!r}")
    s = float(check_sigma(sigma))
    if isinstance(D, bool) or int(D) != D or D < 1:
        raise ValueError(f"D must be an integer >= 1, got {D!r}")
    kk = _f64(k, "k")
    if not bool((kk >= 1).all()):
        raise ValueError(f"k must be >= 1, got min {float(kk.min()) if kk.numel() else k!r}")
    D = int(D)
    num = 12 * float(M_l) ** 2 + 3 * s**2 * float(M_g) ** 2 + 3 * s**4 * (D * D + 2 * D) * float(M_H) ** 2
    return num / (kk + 1) ** 2


# ----------------------------------------------------------------- extremality
def extremal_objective(increments: ArrayLike | Tensor, index_set: ArrayLike | Tensor) -> Tensor:
    """``F(I) = 2 Σ_{i∈I} δ_i² + (Σ_{i∈I} δ_i)²`` — the spectral closed form
    without the ``σ⁴/4`` factor, for the directions ``I``.

    Parameters
    ----------
    increments : array_like (n,)
        Eigenvalue increments δ_i (loss/param²).
    index_set : array_like of ints (D,)
        Distinct indices into ``increments``.

    Returns
    -------
    Tensor () float64
        ``F(I)`` ((loss/param²)²).
    """
    d = _f64(increments, "increments")
    if d.dim() != 1:
        raise ValueError(f"increments must be 1-D, got shape {tuple(d.shape)}")
    idx = torch.as_tensor(index_set).reshape(-1)
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"index_set must hold integer indices, got dtype {idx.dtype}")
    idx = idx.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d.numel()):
        raise ValueError(f"index_set must hold indices in [0, {d.numel() - 1}], got {idx.tolist()}")
    if torch.unique(idx).numel() != idx.numel():
        raise ValueError(f"index_set must hold distinct indices, got {idx.tolist()}")
    sel = d[idx]
    return 2 * (sel * sel).sum() + sel.sum() ** 2


def extremal_index_set(increments: ArrayLike | Tensor, D: int) -> Tensor:
    """The index set ``I`` (|I| = D) that maximises ``F(I) = 2 Σ_I δ_i² + (Σ_I δ_i)²``.

    Exact for increments of any sign, in ``O(n log n)``.

    *Non-negative increments* (the paper's extremality statement): the top-D
    by value is optimal. Exchange argument: if ``i ∈ I``, ``j ∉ I`` and
    ``δ_j ≥ δ_i ≥ 0``, swapping i for j changes ``Σ δ²`` by ``δ_j² − δ_i² ≥ 0``
    and the sum ``S = Σ_I δ ≥ 0`` to ``S + δ_j − δ_i ≥ S ≥ 0``, so ``S²`` does
    not decrease either. (Likewise the bottom-D is optimal when all ``δ ≤ 0``,
    since ``F`` is even in δ.)

    *General sign*: ``(Σ_I δ)² = max_t (2t Σ_I δ − t²)`` (attained at
    ``t = Σ_I δ``), so

        max_I F(I) = max_t [ max_I Σ_{i∈I} w_i(t) − t² ],
        w_i(t) = 2δ_i² + 2tδ_i = 2 (δ_i + t/2)² − t²/2.

    For fixed t the inner maximum takes the D increments farthest from
    ``−t/2``; such a set is always "the j smallest together with the D − j
    largest" for some j ∈ {0..D}. The inner maximiser ``I(t*)`` at the optimal
    ``t*`` satisfies ``F(I(t*)) ≥ Σ_{I(t*)} w_i(t*) − t*² = max F``, so the
    optimum is among these D + 1 candidate sets, which are all evaluated.

    Ties: among candidates with equal ``F`` the one with the most large
    increments (smallest j) wins, so for non-negative increments the answer
    is the top-D by value; among equal increments, lower indices count as
    larger.

    Parameters
    ----------
    increments : array_like (n,)
        Eigenvalue increments δ_i (any sign, finite).
    D : int
        Size of the index set, ``1 ≤ D ≤ n``.

    Returns
    -------
    LongTensor (D,)
        The indices of ``I`` in increasing order.
    """
    d = _f64(increments, "increments")
    if d.dim() != 1:
        raise ValueError(f"increments must be 1-D, got shape {tuple(d.shape)}")
    n = d.numel()
    if isinstance(D, bool) or int(D) != D or not 1 <= D <= n:
        raise ValueError(f"D must be an integer in [1, {n}], got {D!r}")
    D = int(D)
    # Decreasing by value; ties by increasing index (stable sort of −δ).
    order = torch.sort(-d, stable=True).indices
    best, best_val = order[:D], -math.inf
    for j in range(D + 1):  # j smallest + (D − j) largest; disjoint since D ≤ n
        idx = torch.cat([order[: D - j], order[n - j:]])
        val = float(extremal_objective(d, idx))
        if val > best_val:
            best, best_val = idx, val
    return torch.sort(best).values


# ------------------------------------------------------------------- slopes
@dataclass(frozen=True)
class SlopeFit:
    """OLS fit ``log value = intercept + slope · log k`` (natural logs).

    Attributes
    ----------
    slope : float
        Slope of the line (log value per log k).
    intercept : float
        Intercept of the line (log value at k = 1).
    stderr : float
        Standard error of the slope.
    ci_low, ci_high : float
        Two-sided confidence interval of the slope at ``level``:
        ``slope ± t_{(1+level)/2, n−2} · stderr``.
    level : float
        Confidence level of the interval.
    r2 : float
        Coefficient of determination of the line.
    n : int
        Number of points.
    """

    slope: float
    intercept: float
    stderr: float
    ci_low: float
    ci_high: float
    level: float
    r2: float
    n: int


def empirical_slope(k: ArrayLike | Tensor, values: ArrayLike | Tensor, *,
                    level: float = 0.95) -> SlopeFit:
    """Fitted slope of a criterion in k on log–log axes, with a confidence interval.

    Ordinary least squares (``scipy.stats.linregress``) of ``log values`` on
    ``log k``; the interval is ``slope ± t · stderr`` with the Student-t
    quantile at ``(1 + level)/2`` and ``n − 2`` degrees of freedom. The rate
    bound predicts a slope of at most −2 for the squared criteria; the measured
    slope depends on the data and the point (``docs/concepts.md``), so this reports it and
    asserts nothing.

    Parameters
    ----------
    k : array_like (n,)
        Positive sample counts, not all equal; n ≥ 3.
    values : array_like (n,)
        Positive criterion values.
    level : float
        Confidence level in (0, 1).

    Returns
    -------
    SlopeFit
        Slope, intercept, standard error and confidence interval.
    """
    kk = np.asarray(torch.as_tensor(k, dtype=torch.float64), dtype=np.float64)
    vv = np.asarray(torch.as_tensor(values, dtype=torch.float64), dtype=np.float64)
    if kk.ndim != 1 or kk.shape != vv.shape:
        raise ValueError(f"k and values must be 1-D of equal length, got {kk.shape} and {vv.shape}")
    if kk.size < 3:
        raise ValueError(f"a slope with a confidence interval needs >= 3 points, got {kk.size}")
    if not (np.isfinite(kk).all() and np.isfinite(vv).all()) or (kk <= 0).any() or (vv <= 0).any():
        raise ValueError("k and values must be finite and > 0 (they are fitted on log axes)")
    if np.ptp(kk) == 0:
        raise ValueError("k must not be constant")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    fit = stats.linregress(np.log(kk), np.log(vv))
    half = float(stats.t.ppf((1 + level) / 2, kk.size - 2)) * float(fit.stderr)
    return SlopeFit(slope=float(fit.slope), intercept=float(fit.intercept),
                    stderr=float(fit.stderr), ci_low=float(fit.slope) - half,
                    ci_high=float(fit.slope) + half, level=float(level),
                    r2=float(fit.rvalue) ** 2, n=int(kk.size))
