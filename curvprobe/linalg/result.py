"""The certified result of an eigensolve: :class:`Eigenspace`.

For a symmetric operator ``A`` (N × N) an :class:`Eigenspace` holds ``D``
eigenpair estimates ``(θ_i, u_i)``, ``θ_1 ≥ … ≥ θ_D``, with ``U_D`` (N, D)
orthonormal, and their certificate:

* the relative residuals ``r_i = ‖A u_i − θ_i u_i‖ / |θ_1|`` (D,);
* the verdict of the missed-eigenvalue guard (:mod:`curvprobe.linalg.guard`):
  the top Ritz value of its last run on the deflated operator, and the bound
  on the probability that an eigenvalue above ``θ_D + tol·|θ_1|`` went unseen;
* the work spent: operator products, and their cost in product units when
  part of it was carried from a previous solve.

Words. A pair is ``converged`` when ``r_i ≤ tol`` and the guard passed
(found no missed eigenvalue — at the bound, when one was asked for). The
eigenspace is *certified* only at a stated miss bound
(:attr:`Eigenspace.miss_bound`, ``max_miss_probability`` of the solve):
every pair converged and the guard's miss bound fell to it
(:attr:`Eigenspace.certified`). Without a stated bound the guard's fixed
steps decide ``converged`` and the bound they reached is reported, e.g.
0.2 — that is not a certificate.

At the other ends (``which``; :func:`~curvprobe.linalg.eigensolver.top_eigenspace`)
the residuals are relative to :attr:`Eigenspace.scale`, the largest ``|θ|``
the solve saw (a lower bound on ``‖A‖``), and the guard certifies that no
eigenvalue outside its interval ``[ℓ_lo, ℓ_hi]`` went unseen
(:func:`~curvprobe.linalg.guard.guard_levels`). Produced by
:func:`~curvprobe.linalg.eigensolver.top_eigenspace`; see ``docs/concepts.md``
for the role of ``U_D`` in the stabilization criteria.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator


class NotConverged(UserWarning):
    """Warned when an eigensolve returns pairs that are not all converged and certified."""


class ToleranceBelowPrecision(UserWarning):
    """Warned when ``tol`` asks for residuals the operator's arithmetic cannot resolve."""


@dataclass(frozen=True)
class Eigenspace:
    """Top-D eigenpairs with their certificate.

    Attributes
    ----------
    values : Tensor (D,) float64
        Eigenvalue estimates ``θ_1 ≥ … ≥ θ_D``, sorted decreasing whatever
        ``which`` selected (the algebraically largest by default).
    vectors : Tensor (N, D) float64
        Orthonormal eigenvector estimates ``U_D``.
    residuals : Tensor (D,) float64
        ``‖A u_i − θ_i u_i‖ / s`` with ``s`` = :attr:`scale`.
    num_matvecs : int
        Operator products (vectors) used, guard included.
    converged : Tensor (D,) bool
        ``residuals ≤ tol`` and the missed-eigenvalue guard passed (at
        :attr:`miss_bound`, when stated).
    tol : float
    method : str
    guard_value : float
        Top Ritz value of the final deflated guard run (NaN if no guard ran);
        the result is certified only if it is ≤ ``ℓ_hi`` (``θ_D + tol·|θ_1|``
        for ``which="largest"``; :func:`~curvprobe.linalg.guard.guard_levels`).
    miss_probability : float
        Bound on the probability, over the guard's random start, that an
        eigenvalue beyond the guard's levels (above ``θ_D + tol·|θ_1|`` for
        ``which="largest"``) went unseen (NaN if no guard passed):
        :func:`~curvprobe.linalg.guard.guard_miss_probability` of the guard
        run's :func:`~curvprobe.linalg.guard.christoffel_kernel` at the
        levels (summed over the two ends of a two-sided guard). A property of
        the guard's Krylov space, not a heuristic; typical values are in
        ``docs/performance.md``.
    cost : float
        Work in units of one operator product: ``num_matvecs`` plus carried
        images (a basis carried from ``k_0`` to ``k`` samples costs
        ``(k − k_0)/k`` of a product per vector). NaN if not recorded.
    basis, basis_image : Tensor (N, m) or None
        With ``keep_basis=True``: the solver's final orthonormal basis ``Q``
        (the top-D Ritz vectors span part of it) and ``A Q``, so that a warm
        start on an operator that :meth:`~curvprobe.core.operators.LinearOperator.carry`
        can derive from ``operator`` (the next k) starts from all of ``Q``.
    operator : LinearOperator or None
        The operator solved, kept with the basis.
    which : str
        The pairs solved for: ``"largest"``, ``"smallest"``, ``"both_ends"``
        (``⌈D/2⌉`` largest and ``⌊D/2⌋`` smallest) or ``"magnitude"``.
    scale : float
        ``s``, the residual and tolerance scale: ``|θ_1|`` for
        ``"largest"``, else the largest ``|θ|`` of every Ritz value the solve
        saw, a lower bound on ``‖A‖`` (so the certificate is conservative).
    guard_low : float
        Bottom Ritz value of the final two-sided guard run (NaN for
        ``"largest"``): certified only if it is ≥ ``ℓ_lo``.
    miss_bound : float
        The stated miss bound ``β`` the guard ran to (``max_miss_probability``;
        NaN if none was stated): :attr:`certified` is at this level.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    num_matvecs: int
    converged: Tensor
    tol: float
    method: str
    guard_value: float = math.nan
    miss_probability: float = math.nan
    cost: float = math.nan
    basis: Tensor | None = field(default=None, repr=False, compare=False)
    basis_image: Tensor | None = field(default=None, repr=False, compare=False)
    operator: LinearOperator | None = field(default=None, repr=False, compare=False)
    which: str = "largest"
    scale: float = math.nan
    guard_low: float = math.nan
    miss_bound: float = math.nan

    @property
    def D(self) -> int:
        """Number of eigenpairs."""
        return self.values.numel()

    @property
    def all_converged(self) -> bool:
        """Every pair converged (and so the guard passed)."""
        return bool(self.converged.all())

    @property
    def certified(self) -> bool:
        """Every pair converged and the guard's miss bound is at most the
        stated :attr:`miss_bound` (False when no bound was stated)."""
        return (self.all_converged and math.isfinite(self.miss_bound)
                and self.miss_probability <= self.miss_bound)

    @property
    def ritz_matrix(self) -> Tensor:
        """``T = U_Dᵀ A U_D`` (D, D): diagonal ``diag(θ)`` for Rayleigh–Ritz
        vectors (off-diagonal error at round-off level)."""
        return torch.diag(self.values)
