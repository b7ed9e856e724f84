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
    m = min(max(basis_size, nev + 2 * X0.shape[1]), n)
    # the basis, preallocated with one Krylov vector per row: the projections
    # Qᵀ W and Q C then read contiguous memory (docs/performance.md)
    rows = torch.empty(m + X0.shape[1], n, dtype=torch.float64, device=op.device)
    size = used = 0
    X = next_block(X0, rows[:0].T, generator, 0.0)
    T = torch.zeros(0, 0, dtype=torch.float64, device=op.device)
    while True:
        b = min(X.shape[1], n - size)
        X = X[:, :b]
        W, T = _expand(op, X, rows, size, T)
        used += b
        size += b
        Q = rows[:size].T
        theta, S = _descending_eigh(T)
        wanted = min(nev, size)
        top_scale = scale if scale is not None else float(theta[:wanted].abs().max())
        res = _residual_norms(S[size - b :, :], W)
        done = size >= nev and bool((res[:nev] <= tol * top_scale).all())
        if until is not None:
            done = done or until(T, float(theta[0]))
        if done or used >= max_matvecs or size >= n:
            return _lanczos_run(Q, T, W, theta, S, res, wanted, keep_basis)
        if size + b > m:
            # thick restart: keep the best p Ritz vectors; A Z = Z Θ + W S_lastᵀ
            size = _thick_restart(rows, S, size, nev, m, b)
            Q = rows[:size].T
            T = torch.diag(theta[:size])
        X = next_block(W, Q, generator, 1e-14 * max(top_scale, 1e-300))


def _expand(op: LinearOperator, X: Tensor, rows: Tensor, size: int, T: Tensor) -> tuple[Tensor, Tensor]:
    """One block step: append ``X`` (N, b) to the basis ``rows[:size]`` and
    return ``W`` (N, b), the part of ``A X`` orthogonal to the extended basis,
    and the projected matrix (size + b, size + b): ``T`` bordered by the
    block's Gram–Schmidt coefficients, symmetrised."""
    b = X.shape[1]
    W = op.matmat(X)
    rows[size : size + b] = X.T
    W, H = project_out(W, rows[: size + b].T)
    new = size + b
    T_new = torch.zeros(new, new, dtype=torch.float64, device=op.device)
    T_new[:size, :size] = T
    T_new[:, size:] = H
    T_new[size:, :] = H.T
    return W, 0.5 * (T_new + T_new.T)


def _descending_eigh(T: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the symmetric ``T``, eigenvalues decreasing."""
    theta, S = torch.linalg.eigh(T)
    return theta.flip(0), S.flip(1)


def _residual_norms(S_last: Tensor, W: Tensor) -> Tensor:
    """``‖W s_last‖`` for every column ``s_last`` of ``S_last`` (b, size): the
    residual norms of all Ritz pairs, from the Gram matrix ``Wᵀ W``."""
    return torch.einsum("ij,ik,kj->j", S_last, W.T @ W, S_last).clamp_min(0).sqrt()


def _thick_restart(rows: Tensor, S: Tensor, size: int, nev: int, m: int, b: int) -> int:
    """Overwrite the leading basis rows with the best ``p`` Ritz vectors
    ``Z = Q S_p`` and return ``p = max(nev, min(m − b, nev + ⌊(m − nev)/2⌋))``."""
    p = max(nev, min(m - b, nev + (m - nev) // 2))
    rows[:p] = S[:, :p].T @ rows[:size]
    return p


def _lanczos_run(Q: Tensor, T: Tensor, W: Tensor, theta: Tensor, S: Tensor, res: Tensor,
                 wanted: int, keep_basis: bool) -> KrylovRun:
    """The run's ``wanted`` Ritz pairs and residual factor; with ``keep_basis``
    also ``Q`` and ``A Q = Q T + W E_lastᵀ``."""
    size, b = Q.shape[1], W.shape[1]
    S_last = S[size - b :, :wanted].T.contiguous()
    basis = image = None
    if keep_basis:
        basis, image = Q.clone(), Q @ T
        image[:, size - b :] += W
    return KrylovRun(theta[:wanted], Q @ S[:, :wanted], res[:wanted], W, S_last, T, basis, image)
