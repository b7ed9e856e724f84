"""Thick-restart block Lanczos with full reorthogonalisation.

:func:`thick_restart_lanczos` builds an orthonormal Krylov basis ``Q``
(N, m) of a symmetric operator ``A`` (N × N) from a start block ``X_0``
(N, b), one block of ``b`` products per step, and keeps the projected matrix
``T = Qᵀ A Q`` (m, m) with the Lanczos relation

    A Q = Q T + F E_lastᵀ,

where ``F`` (N, b) is the part of the last block's image orthogonal to ``Q``
and ``E_last`` (m, b) selects the last ``b`` basis vectors. ``T`` is filled
from the Gram–Schmidt coefficients of both passes (reorthogonalisation by
:func:`~curvprobe.linalg._krylov.project_out`), so it is exact up to
round-off even after a restart, not only tridiagonal. With ``T S = S Θ`` a
Ritz pair ``(θ, u = Q s)`` has the residual

    A u − θ u = F s_last,   ‖A u − θ u‖ = ‖F s_last‖ = √(s_lastᵀ (Fᵀ F) s_last),

with ``s_last`` the last ``b`` entries of ``s``: residuals of all Ritz pairs
cost no extra product. For ``b = 1`` this is the classical
``‖f‖ |s_m|``.

Thick restart (Wu & Simon): the basis holds at most ``m`` vectors
(``basis_size``, at least ``nev + 2b``). When the next block would not fit,
the best ``p = max(nev, min(m − b, nev + ⌊(m − nev)/2⌋))`` Ritz vectors
``Z = Q S_p`` (N, p) are kept and the run goes on from ``F``: then
``A Z = Z Θ_p + F S_lastᵀ``, the projected matrix restarts as ``diag(Θ_p)``
and the next block's coefficients fill its border (an arrowhead for
``b = 1``).

The basis is stored as rows (one Krylov vector per row of an
``(m + b, N)`` buffer) so that ``Qᵀ W`` and ``Q C`` read contiguous memory;
the reasons and timings are in ``docs/performance.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator
from curvprobe.linalg._krylov import KrylovRun, next_block, project_out


def thick_restart_lanczos(op: LinearOperator, nev: int, X0: Tensor, *, tol: float,
                          basis_size: int, max_matvecs: int, generator: torch.Generator,
                          scale: float | None = None, keep_basis: bool = False,
                          until: Callable[[Tensor, float], bool] | None = None) -> KrylovRun:
    """Thick-restart block Lanczos for the ``nev`` largest eigenpairs of ``op``.

    Parameters
    ----------
    op : LinearOperator
        Symmetric, N × N; only ``matmat`` is used.
    nev : int
        Number of wanted (algebraically largest) eigenpairs.
    X0 : Tensor (N, b)
        Starts the Krylov space; its width ``b`` is the block size (1: the
        classic single-vector method; ``b > 1`` uses batched products). It
        is orthonormalised first.
    tol : float
        Stop when every wanted pair has ``‖A u − θ u‖ ≤ tol · scale``.
    basis_size : int
        Basis bound ``m`` before a thick restart (raised to ``nev + 2b``,
        capped at N).
    max_matvecs : int
        Budget of operator products (vectors).
    generator : torch.Generator
        Draws replacement directions when an invariant subspace is found.
    scale : float, optional
        Residual scale; defaults to ``max |θ_i|`` over the wanted pairs.
    keep_basis : bool
        Also return ``Q`` and ``A Q = Q T + F E_lastᵀ``.
    until : callable, optional
        ``until(T, θ_1)`` is asked after every step with the projected
        matrix and the top Ritz value; the run stops when it returns True
        (the guard's stop rule, :func:`~curvprobe.linalg.guard.guard_stop_rule`).

    Returns
    -------
    KrylovRun
        ``min(nev, size)`` Ritz pairs with absolute residuals, ``F`` the last
        block's residual (N, b), ``S`` the last ``b`` rows of their Ritz
        coefficients transposed (nev, b), ``T`` the final projected matrix.
        The run also stops when the Krylov space fills all N dimensions or
        the budget is spent.
    """
    n = op.shape[0]
    b = X0.shape[1]
    m = min(max(basis_size, nev + 2 * b), n)
    # the basis, preallocated with one Krylov vector per row: the projections
    # Qᵀ W and Q C then read contiguous memory (docs/performance.md)
    rows = torch.empty(m + b, n, dtype=torch.float64, device=op.device)
    size = 0
    X = next_block(X0, rows[:0].T, generator, 0.0)
    T = torch.zeros(0, 0, dtype=torch.float64, device=op.device)
    used = 0
    while True:
        b = min(X.shape[1], n - size)
        X = X[:, :b]
        W = op.matmat(X)
        used += b
        rows[size : size + b] = X.T
        size += b
        Q = rows[:size].T
        W, H = project_out(W, Q)
        T_new = torch.zeros(size, size, dtype=torch.float64, device=op.device)
        T_new[: size - b, : size - b] = T
        T_new[:, size - b :] = H
        T_new[size - b :, :] = H.T
        T = 0.5 * (T_new + T_new.T)
        theta, S = torch.linalg.eigh(T)
        theta, S = theta.flip(0), S.flip(1)
        wanted = min(nev, size)
        top_scale = scale if scale is not None else float(theta[:wanted].abs().max())
        S_last = S[size - b :, :]
        res = torch.einsum("ij,ik,kj->j", S_last, W.T @ W, S_last).clamp_min(0).sqrt()  # ‖W s_last‖
        done = size >= nev and bool((res[:nev] <= tol * top_scale).all())
        if until is not None:
            done = done or until(T, float(theta[0]))
        if done or used >= max_matvecs or size >= n:
            basis = image = None
            if keep_basis:
                basis, image = Q.clone(), Q @ T
                image[:, size - b :] += W
            return KrylovRun(theta[:wanted], Q @ S[:, :wanted], res[:wanted], W,
                             S_last[:, :wanted].T.contiguous(), T, basis, image)
        if size + b > m:
            # thick restart: keep the best p Ritz vectors; A Z = Z Θ + W S_lastᵀ
            p = max(nev, min(m - b, nev + (m - nev) // 2))
            rows[:p] = S[:, :p].T @ rows[:size]
            size = p
            Q = rows[:size].T
            T = torch.diag(theta[:p])
        X = next_block(W, Q, generator, 1e-14 * max(top_scale, 1e-300))
