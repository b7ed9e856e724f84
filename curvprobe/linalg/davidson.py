"""Block Davidson from a previous subspace: the warm start.

:func:`block_davidson` solves for the ``nev`` largest eigenpairs of a
symmetric ``A`` (N × N) starting from a subspace ``U_0`` (N, p) — the
eigenvectors at the previous sample count ``k`` or checkpoint. It keeps an
orthonormal basis ``Q`` (N, m) next to its image ``A Q`` (N, m) and repeats
a Rayleigh–Ritz step

    T = Qᵀ (A Q),   T S = S Θ,   X = Q S,   R = (A Q) S − X Θ,

with explicit residuals ``R`` (N, nev) (memory ``2 × N × basis_size``).

* The first block is ``U_0`` itself: ``p`` products in one batched
  ``matmat`` (the fastest HVP path), or none when ``A U_0`` is known — a
  basis carried by :meth:`~curvprobe.core.operators.LinearOperator.carry`
  from the previous ``k``. If ``U_0`` barely moved, that one step
  certifies.
* Each further block adds the residuals of the pairs with
  ``‖r_i‖ > tol · max |θ|`` (at most 8, the worst first), orthonormalised
  against ``Q``: no preconditioner.
* At the basis bound the run restarts from the best
  ``nev + ⌊(basis_size − nev)/2⌋`` Ritz vectors (and their images).
* If a residual after the first block exceeds ``reach · tol · max |θ|``, the
  subspace moved too far for Davidson blocks to beat Lanczos and the
  Rayleigh–Ritz result is returned as it is;
  :func:`~curvprobe.linalg.eigensolver.top_eigenspace` then continues with
  :func:`~curvprobe.linalg.lanczos.thick_restart_lanczos` from the sum of its
  Ritz vectors.

Which pairs (``which``): the Ritz values are put in the order of
:func:`~curvprobe.linalg._krylov.ritz_order`; for any end but the largest the
residual scale is the largest ``|θ|`` of the Rayleigh–Ritz step (a lower
bound on ``‖A‖``). With ``basis_dtype=torch.float32`` the basis and its image
are stored in float32 (float64 Rayleigh–Ritz arithmetic on row chunks); the
residuals are then estimates at float32 round-off of ``A Q``, and the caller
certifies with :func:`~curvprobe.linalg._krylov.explicit_pairs`.

The measurements behind the block size and the reach are in
``docs/performance.md``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator
from curvprobe.linalg._krylov import (
    KrylovRun,
    basis_matmul,
    basis_t_matmul,
    combine_rows_,
    next_block,
    orthonormalize_against,
    ritz_order,
)

DAVIDSON_BLOCK = 8
"""Residuals added per Davidson block (one batched ``matmat``)."""


def _start(U0: Tensor, image: Tensor | None, m: int, basis_dtype: torch.dtype,
           generator: torch.Generator) -> tuple[Tensor, Tensor, int, Tensor | None]:
    """Buffers for ``Q`` and ``A Q`` as rows (as the Lanczos basis: a new
    block is written in place and a restart combines in place, no copies),
    ``(capacity, N)`` with capacity ``max(m, p) + DAVIDSON_BLOCK`` (at most
    N); the rows filled so far and the first block to apply: the
    orthonormalised ``U0`` (N, p), or none when its ``image`` is given (then
    ``U0`` and ``image`` fill the first ``p`` rows)."""
    n = U0.shape[0]
    capacity = min(max(m, U0.shape[1]) + DAVIDSON_BLOCK, n)
    Q_rows = torch.empty(capacity, n, dtype=basis_dtype, device=U0.device)
    AQ_rows = torch.empty_like(Q_rows)
    if image is None:
        return Q_rows, AQ_rows, 0, next_block(U0 / U0.norm(dim=0).clamp_min(1e-300), U0[:, :0], generator,
                                              1e-10)
    Q_rows[:U0.shape[1]], AQ_rows[:U0.shape[1]] = U0.T, image.T
    return Q_rows, AQ_rows, U0.shape[1], None


def _rayleigh_ritz(Q: Tensor, AQ: Tensor, wanted: int, which: str
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rayleigh–Ritz on the basis ``Q`` (N, w) with its image ``A Q``:
    ``T = Qᵀ A Q`` (w, w), its eigenvalues ``θ`` and vectors ``S`` in the
    order of ``which``, and the ``wanted`` Ritz vectors ``X = Q S`` and
    their residuals ``R = A Q S − X Θ`` (N, wanted), float64."""
    T = basis_t_matmul(Q, AQ)
    theta, S = torch.linalg.eigh(0.5 * (T + T.T))
    theta, S = theta.flip(0), S.flip(1)
    if which != "largest":
        order = ritz_order(theta, which)
        theta, S = theta[order], S[:, order]
    X = basis_matmul(Q, S[:, :wanted])
    R = basis_matmul(AQ, S[:, :wanted]).sub_(X * theta[:wanted])
    return T, theta, S, X, R


def block_davidson(op: LinearOperator, nev: int, U0: Tensor, *, tol: float, basis_size: int,
                   max_matvecs: int, generator: torch.Generator, reach: float = math.inf,
                   image: Tensor | None = None, keep_basis: bool = False,
                   which: str = "largest", basis_dtype: torch.dtype = torch.float64) -> KrylovRun:
    """Block Davidson (no preconditioner) for the ``nev`` largest eigenpairs,
    started from the subspace ``U0`` (N, p): the warm start.

    Parameters
    ----------
    op : LinearOperator
        Symmetric, N × N; only ``matmat`` is used.
    nev : int
        Number of wanted (algebraically largest) eigenpairs.
    U0 : Tensor (N, p)
        The start subspace; its columns are normalised and orthonormalised.
        With ``image`` given it must already be orthonormal (a carried basis).
    tol : float
        Stop when every wanted pair has ``‖A x − θ x‖ ≤ tol · max |θ|``.
    basis_size : int
        Basis bound ``m`` (raised to ``2 nev``, capped at N).
    max_matvecs : int
        Budget of operator products (vectors).
    generator : torch.Generator
        Draws replacement directions when a block is rank-deficient.
    reach : float
        After the first block, return at once if a residual exceeds
        ``reach · tol · max |θ|``.
    image : Tensor (N, p), optional
        ``A U0``, if known: the first block then costs no product.
    keep_basis : bool
        Also return the final ``Q`` and ``A Q``.
    which : {"largest", "smallest", "both_ends", "magnitude"}
    basis_dtype : torch.float64 or torch.float32
        Storage of ``Q`` and ``A Q``.

    Returns
    -------
    KrylovRun
        The Ritz pairs with absolute residuals; ``F = R`` (N, nev) and
        ``S = I`` (nev, nev), so that ``A X − X Θ = F Sᵀ``; ``T = Qᵀ A Q``.
    """
    n = op.shape[0]
    m = min(max(basis_size, 2 * nev), n)
    Q_rows, AQ_rows, size, Z = _start(U0, image, m, basis_dtype, generator)
    used, first = 0, True
    while True:
        if Z is not None:
            b = Z.shape[1]
            AQ_rows[size:size + b] = op.matmat(Z).T
            Q_rows[size:size + b] = Z.T
            used, size = used + b, size + b
        Q, AQ = Q_rows[:size].T, AQ_rows[:size].T
        wanted = min(nev, size)
        T, theta, S, X, R = _rayleigh_ritz(Q, AQ, wanted, which)
        res = R.norm(dim=0)
        top = float((theta[:wanted] if which == "largest" else theta).abs().max())
        open_ = res > tol * top
        far = first and bool((res > reach * tol * top).any())
        first = False
        if far or (not bool(open_.any()) and wanted == nev) or used >= max_matvecs or size >= n:
            return KrylovRun(theta[:wanted], X, res, R,
                             torch.eye(wanted, dtype=torch.float64, device=op.device), T,
                             Q if keep_basis else None, AQ if keep_basis else None, top)
        idx = torch.nonzero(open_)[:, 0]
        room = min(DAVIDSON_BLOCK, max_matvecs - used, n - size)
        idx = idx[res[idx].argsort(descending=True)[: max(1, room)]]
        if size + idx.numel() > m:  # restart from the best Ritz vectors
            keep = max(wanted, min(m - idx.numel(), nev + (m - nev) // 2))
            combine_rows_(Q_rows, S[:, :keep].T, size)
            combine_rows_(AQ_rows, S[:, :keep].T, size)
            size = keep
            Q = Q_rows[:size].T
        Z = next_block(orthonormalize_against(R[:, idx], Q), Q, generator,
                       1e-14 * max(top, 1e-300))
