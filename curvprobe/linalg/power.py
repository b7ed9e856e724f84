"""Deflated power iteration: the reference baseline (PyHessian's method).

:func:`deflated_power_iteration` finds ``D`` eigenpairs of a symmetric ``A``
(N × N) one at a time. For pair ``i`` it iterates from a random unit vector
orthogonal to the pairs found so far, ``U_{i−1}`` (N, i − 1):

    v ← (I − U Uᵀ)² v / ‖·‖,   θ = vᵀ A v,   v ← A v / ‖A v‖,

and stops after ``iters`` products or when the relative change
``|θ − θ_prev| / (|θ_prev| + 1e-6)`` drops below ``change_tol``. The
residual ``‖A v − θ v‖`` of the last iterate is reported relative to
``max |θ|``.

It converges with the ratio of consecutive eigenvalues and stops on the
eigenvalue, not the residual, so its ``converged`` flags are often False and
it has no missed-eigenvalue guard: kept only to compare against (the numbers
are in ``docs/performance.md``). Reached through
:func:`~curvprobe.linalg.eigensolver.top_eigenspace` with
``method="power"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator
from curvprobe.linalg._krylov import orthonormalize_against, random_unit
from curvprobe.linalg.result import Eigenspace


def deflated_power_iteration(op: LinearOperator, D: int, *, tol: float,
                             generator: torch.Generator, budget: int, iters: int,
                             change_tol: float, start: int) -> Eigenspace:
    """PyHessian's deflated power iteration (reference baseline).

    Parameters
    ----------
    op : LinearOperator
        Symmetric, N × N; only ``matvec`` is used.
    D : int
        Number of eigenpairs.
    tol : float
        Relative residual for the ``converged`` flags (not a stopping rule).
    generator : torch.Generator
        Draws the start vectors.
    budget : int
        Operator products allowed since ``start``.
    iters : int
        Iteration cap per eigenpair.
    change_tol : float
        Stop an eigenpair when its eigenvalue changes by less than this,
        relative.
    start : int
        ``op.num_matvecs`` when the solve began.

    Returns
    -------
    Eigenspace
        ``method="power"``, sorted by eigenvalue, no guard (``guard_value``
        and ``miss_probability`` NaN).
    """
    n = op.shape[0]
    values: list[float] = []
    vectors: list[Tensor] = []
    residuals: list[float] = []
    for _ in range(D):
        found = torch.stack(vectors, dim=1) if vectors else None
        v = random_unit(n, generator, op.device, found)
        theta, prev, res = 0.0, None, math.inf
        for _ in range(iters):
            if op.num_matvecs - start >= budget:
                break
            v = orthonormalize_against(v[:, None], found)[:, 0]
            v = v / v.norm()
            Hv = op.matvec(v)
            theta = float(v @ Hv)
            res = float((Hv - theta * v).norm())
            if prev is not None and abs(theta - prev) / (abs(prev) + 1e-6) < change_tol:
                break
            prev = theta
            v = Hv / Hv.norm()
        values.append(theta)
        vectors.append(v)
        residuals.append(res)
    vals = torch.tensor(values, dtype=torch.float64)
    order = vals.argsort(descending=True)
    U = torch.stack(vectors, dim=1)[:, order]
    scale = float(vals.abs().max()) or 1.0
    rel = torch.tensor(residuals, dtype=torch.float64)[order] / scale
    used = op.num_matvecs - start
    return Eigenspace(vals[order], U, rel, used, rel <= tol, tol, "power", cost=float(used))
