"""Trace of a symmetric operator from products alone: Hutchinson and Hutch++.

Both estimators see ``A`` (N × N) only through ``matmat`` and spend
``num_matvecs = m`` products in a few batched blocks.

Hutchinson (1990). With ``m`` Rademacher vectors ``g_i`` (entries ±1),

    t̂ = (1/m) Σ_i g_iᵀ A g_i,   E t̂ = tr A,   Var(g_iᵀ A g_i) = 2 (‖A‖_F² − Σ_j A_jj²),

and the reported standard error is the sample standard deviation of the
``g_iᵀ A g_i`` over ``√m``.

Hutch++ (Meyer, Musco, Musco & Woodruff 2021). Split ``m`` into thirds:
``k = ⌊m/3⌋`` products of a Rademacher block ``S`` (N, k) give
``Q = orth(A S)``, an orthonormal basis of the dominant range of ``A``; ``k``
more give ``A Q`` and the exact trace ``tr(Qᵀ A Q)`` of that part; the
remaining ``m − 2k`` Rademacher vectors ``g_i`` estimate the rest by
Hutchinson on the deflated ``P A P``, ``P = I − Q Qᵀ``:

    t̂ = tr(Qᵀ A Q) + (1/(m − 2k)) Σ_i (P g_i)ᵀ A (P g_i).

Because ``tr A = tr(Qᵀ A Q) + tr(P A P)`` for every orthonormal ``Q``, the
estimate is unbiased given ``Q``: its only variance is Hutchinson's on
``P A P``, ``2 ‖P A P‖_F² / (m − 2k)`` at most, where a Hessian's few large
eigenvalues — which dominate ``‖A‖_F`` — have been removed. For a spectrum
decaying like the Hessians of trained networks this is far below
Hutchinson's variance at the same ``m`` (the measurements are in
``docs/performance.md``). The reported standard error is the sample standard
deviation of the deflated terms over ``√(m − 2k)``: an unbiased estimate of
the conditional variance, whose mean over ``Q`` is the total variance.

Units: those of ``A`` (for a Hessian, loss/param²). Random vectors come from
a ``torch.Generator`` on the operator's device seeded with ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator

TRACE_METHODS = ("hutch++", "hutchinson")
"""Valid values of ``trace(method=...)``."""


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate with its standard error.

    Attributes
    ----------
    value : float
        The estimate of ``tr A`` (units of ``A``).
    stderr : float
        Its standard error: the sample standard deviation of the Hutchinson
        terms over the square root of their number (0 when the deflated part
        is exhausted, ``k ≥ N``).
    num_matvecs : int
        Operator products spent.
    method : str
        ``"hutch++"`` or ``"hutchinson"``.
    exact_part : float
        ``tr(Qᵀ A Q)``, the part of the value computed exactly (0 for
        Hutchinson).
    samples : Tensor (s,) float64
        The Hutchinson terms (on ``P A P`` for Hutch++).
    """

    value: float
    stderr: float
    num_matvecs: int
    method: str
    exact_part: float
    samples: Tensor


def rademacher(n: int, k: int, generator: torch.Generator, device: torch.device,
               dtype: torch.dtype = torch.float64) -> Tensor:
    """``k`` Rademacher columns (N, k) (entries ±1, exact in any ``dtype``),
    drawn on the generator's device and moved to ``device``; the same draw
    whatever the dtype."""
    bits = torch.randint(0, 2, (n, k), generator=generator, device=generator.device, dtype=dtype)
    return bits.mul_(2).sub_(1).to(device)


def hutchinson_terms(op: LinearOperator, G: Tensor, Q: Tensor | None = None) -> Tensor:
    """``(P g_i)ᵀ A (P g_i)`` for the columns ``g_i`` of ``G`` (N, s), with
    ``P = I − Q Qᵀ`` (identity when ``Q`` is None): (s,) float64, one batched
    product."""
    if Q is not None:
        G = G - Q @ (Q.T @ G)
    return (G * op.matmat(G)).sum(dim=0)


def _mean_stderr(terms: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of ``terms`` (s,) (NaN error for s < 2)."""
    s = terms.numel()
    if s == 0:
        return 0.0, 0.0
    std = float(terms.std()) if s > 1 else math.nan
    return float(terms.mean()), std / math.sqrt(s)


def trace(op: LinearOperator, *, method: str = "hutch++", num_matvecs: int = 60,
          seed: int = 0) -> TraceEstimate:
    """Estimate ``tr A`` of the symmetric ``op`` from ``num_matvecs`` products.

    Parameters
    ----------
    op : LinearOperator
        E.g. ``problem.hessian_operator(k)`` (N × N); only ``matmat`` is used.
    method : {"hutch++", "hutchinson"}
        Hutch++ (low-rank part exact, the rest by Hutchinson) or plain
        Hutchinson; the module docstring gives both and their variances.
    num_matvecs : int
        Products to spend: ≥ 3 for Hutch++ (thirds), ≥ 2 for Hutchinson.
    seed : int
        Seeds the Rademacher vectors.

    Returns
    -------
    TraceEstimate
        ``value`` ± ``stderr`` in the units of ``A``.
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(TRACE_METHODS)}")
    low = 3 if method == "hutch++" else 2
    if isinstance(num_matvecs, bool) or int(num_matvecs) != num_matvecs or num_matvecs < low:
        raise ValueError(f"num_matvecs must be an integer >= {low} for {method}, got {num_matvecs!r}")
    n, m = op.shape[0], int(num_matvecs)
    generator = torch.Generator(device=op.device).manual_seed(int(seed))
    start = op.num_matvecs
    if method == "hutchinson":
        terms = hutchinson_terms(op, rademacher(n, m, generator, op.device))
        value, stderr = _mean_stderr(terms)
        return TraceEstimate(value, stderr, op.num_matvecs - start, method, 0.0, terms)
    k = min(m // 3, n)
    Q, _ = torch.linalg.qr(op.matmat(rademacher(n, k, generator, op.device)))
    exact = float(torch.trace(Q.T @ op.matmat(Q)))
    rest = m - 2 * k if k < n else 0  # k = N: Q spans the space, nothing is left
    terms = (hutchinson_terms(op, rademacher(n, rest, generator, op.device), Q) if rest
             else torch.zeros(0, dtype=torch.float64, device=op.device))
    mean, stderr = _mean_stderr(terms)
    return TraceEstimate(exact + mean, stderr, op.num_matvecs - start, method, exact, terms)
