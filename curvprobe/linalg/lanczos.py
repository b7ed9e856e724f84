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
the reasons and timings are in ``docs/performance.md``. With
``basis_dtype=torch.float32`` the rows are stored in float32 (half the
memory): the operator is applied to the stored vectors and every product
with the basis is float64 (:func:`~curvprobe.linalg._krylov.basis_t_matmul`),
so the relation holds for the stored basis up to its loss of orthogonality
(≈ float32 round-off); the residuals it gives are then estimates, and the
caller certifies with :func:`~curvprobe.linalg._krylov.explicit_pairs`.

Host synchronisation: the projected matrix ``T`` lives on the host. A step
reads there only small tensors — the ``b`` flags of the DGKS test and one
packed transfer of the block's Gram–Schmidt coefficients (size + b, b), the
Gram matrix ``Fᵀ F`` (b, b) and ``‖F[:, 0]‖``, plus for ``b > 1`` the (b, b)
Gram matrix of the second Cholesky–QR pass
(:func:`~curvprobe.linalg._krylov.orthonormal_block`) — never an N-sized
one; eigenvalues, residual norms and the stop test are computed on the host.

Which pairs (``which``, :data:`~curvprobe.linalg._krylov.WHICH`): the Ritz
values are ordered by :func:`~curvprobe.linalg._krylov.ritz_order`, the first
``nev`` are wanted and a thick restart keeps the first ``p``. A Krylov space
is the same for ``A`` and ``−A``: one run serves either end, or both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator
from curvprobe.linalg._krylov import (
    KrylovRun,
    combine_rows_,
    next_block,
    orthonormal_block,
    project_out,
    ritz_order,
)


def thick_restart_lanczos(op: LinearOperator, nev: int, X0: Tensor, *, tol: float,
                          basis_size: int, max_matvecs: int, generator: torch.Generator,
                          scale: float | None = None, keep_basis: bool = False,
                          until: Callable[[Tensor, float], bool] | None = None,
                          which: str = "largest",
                          basis_dtype: torch.dtype = torch.float64) -> KrylovRun:
    """Thick-restart block Lanczos for ``nev`` eigenpairs of ``op`` at one or both ends.

    Parameters
    ----------
    op : LinearOperator
        Symmetric, N × N; only ``matmat`` is used.
    nev : int
    X0 : Tensor (N, b)
        Starts the Krylov space; its width ``b`` is the block size (1: the
        classic single-vector method; ``b > 1`` uses batched products). It
        is orthonormalised first.
    tol : float
        Stop when every wanted pair has ``‖A u − θ u‖ ≤ tol · scale``.
    basis_size : int
        Basis bound ``m`` before a thick restart (``≥ nev + 2b``, ``≤ N``).
    max_matvecs : int
        Budget of operator products (vectors).
    generator : torch.Generator
        Draws replacements when an invariant subspace is found.
    scale : float, optional
        Residual scale. Default: ``max |θ_i|`` over the wanted pairs for
        ``which="largest"``, else the largest ``|θ|`` of all Ritz values seen
        (a lower bound on ``‖A‖``: each is a Rayleigh quotient).
    keep_basis : bool
        Also return ``Q`` and ``A Q = Q T + F E_lastᵀ`` (float64 basis only).
    until : callable, optional
        ``until(T, θ_1)``, asked after every step with the projected matrix
        (on the host) and the first wanted Ritz value, stops the run when
        True (:func:`~curvprobe.linalg.guard.guard_stop_rule`).
    which : {"largest", "smallest", "both_ends", "magnitude"}
        The wanted pairs (:func:`~curvprobe.linalg._krylov.ritz_order`).
    basis_dtype : torch.float64 or torch.float32
        Storage of the basis rows; arithmetic is float64 either way.

    Returns
    -------
    KrylovRun
        ``min(nev, size)`` Ritz pairs in the order of ``which``, absolute
        residuals, ``F`` the last block's residual (N, b), ``S`` the last
        ``b`` rows of their Ritz coefficients transposed (nev, b), ``T`` and
        the residual scale. It also stops when the Krylov space fills all N
        dimensions or the budget is spent.
    """
    n = op.shape[0]
    m = min(max(basis_size, nev + 2 * X0.shape[1]), n)
    # the basis, one Krylov vector per row: Qᵀ W and Q C read contiguous memory (docs/performance.md)
    rows = torch.empty(m + X0.shape[1], n, dtype=basis_dtype, device=op.device)
    X0 = X0.to(torch.float64)
    size = used = 0
    seen = 0.0  # largest |Ritz value| so far: a lower bound on ‖A‖
    X, T = next_block(X0, rows[:0].T, generator, 0.0), torch.zeros(0, 0, dtype=torch.float64)
    while True:
        b = min(X.shape[1], n - size)
        X = X[:, :b]
        W, T, gram, first_norm = _expand(op, X, rows, size, T)
        del X  # the basis rows hold it: no float64 copy beside the final Ritz vectors
        used, size = used + b, size + b
        Q = rows[:size].T
        theta, S = _ordered_eigh(T, which)
        seen = max(seen, float(theta.abs().max()))
        wanted = min(nev, size)
        top_scale = _residual_scale(scale, theta[:wanted], seen, which)
        res = _residual_norms(S[size - b :, :], gram)
        done = size >= nev and bool((res[:nev] <= tol * top_scale).all())
        if until is not None:
            done = done or until(T, float(theta[0]))
        if done or used >= max_matvecs or size >= n:
            return _lanczos_run(Q, T, W, theta, S, res, wanted, keep_basis, top_scale)
        if size + b > m:
            # thick restart: keep the best p Ritz vectors; A Z = Z Θ + W S_lastᵀ
            size = _thick_restart(rows, S, size, nev, m, b)
            Q = rows[:size].T
            T = torch.diag(theta[:size])
        X = _next_vectors(W, gram, first_norm, Q, generator, 1e-14 * max(top_scale, 1e-300))


def _next_vectors(W: Tensor, gram: Tensor, first_norm: float, Q: Tensor,
                  generator: torch.Generator, floor: float) -> Tensor:
    """The next block: ``W`` (N, b) normalised by its norm read with the
    step's transfer (b = 1), or by Cholesky–QR on its Gram matrix (b > 1)."""
    if W.shape[1] == 1:
        return next_block(W, Q, generator, floor, first_norm)
    return orthonormal_block(W, gram, Q, generator, floor)


def _residual_scale(scale: float | None, wanted: Tensor, seen: float, which: str) -> float:
    """The residual scale: ``scale`` if given, else ``max |θ|`` over the
    wanted Ritz values (``which="largest"``) or over every Ritz value seen."""
    if scale is not None:
        return scale
    return float(wanted.abs().max()) if which == "largest" else seen


def _expand(op: LinearOperator, X: Tensor, rows: Tensor, size: int, T: Tensor
            ) -> tuple[Tensor, Tensor, Tensor, float]:
    """One block step: append ``X`` (N, b) to the basis ``rows[:size]`` and
    return ``W`` (N, b), the part of ``A X`` orthogonal to the extended basis;
    the projected matrix (size + b, size + b) on the host: ``T`` bordered by
    the block's Gram–Schmidt coefficients, symmetrised; the Gram matrix
    ``Wᵀ W`` (b, b) on the host, and ``‖W[:, 0]‖`` — one transfer of small
    tensors. A float32 basis is applied as stored (``A`` times the rounded
    vectors)."""
    b = X.shape[1]
    if rows.dtype == torch.float64:
        W = op.matmat(X)
        rows[size : size + b] = X.T
    else:  # the stored (rounded) vectors, rounded in place: no float64 copy beside X
        rows[size : size + b] = X.T
        W = op.matmat(X.copy_(rows[size : size + b].T))
    W, H = project_out(W, rows[: size + b].T)
    new = size + b
    packed = torch.cat([H, W.T @ W, W[:, 0].norm().reshape(1, 1).expand(1, b)]).cpu()
    H, gram, first_norm = packed[:new], packed[new : new + b], float(packed[new + b, 0])
    T_new = torch.zeros(new, new, dtype=torch.float64)
    T_new[:size, :size] = T
    T_new[:, size:] = H
    T_new[size:, :] = H.T
    return W, 0.5 * (T_new + T_new.T), gram, first_norm


def _ordered_eigh(T: Tensor, which: str) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the symmetric ``T``, eigenvalues decreasing, then put in
    the preference order of ``which``."""
    theta, S = torch.linalg.eigh(T)
    theta, S = theta.flip(0), S.flip(1)
    if which == "largest":
        return theta, S
    order = ritz_order(theta, which)
    return theta[order], S[:, order]


def _residual_norms(S_last: Tensor, gram: Tensor) -> Tensor:
    """``‖W s_last‖`` for every column ``s_last`` of ``S_last`` (b, size): the
    residual norms of all Ritz pairs, from the Gram matrix ``gram = Wᵀ W``."""
    return torch.einsum("ij,ik,kj->j", S_last, gram, S_last).clamp_min(0).sqrt()


def _thick_restart(rows: Tensor, S: Tensor, size: int, nev: int, m: int, b: int) -> int:
    """Overwrite the leading basis rows with the best ``p`` Ritz vectors
    ``Z = Q S_p`` and return ``p = max(nev, min(m − b, nev + ⌊(m − nev)/2⌋))``."""
    p = max(nev, min(m - b, nev + (m - nev) // 2))
    combine_rows_(rows, S[:, :p].T, size)
    return p


def _lanczos_run(Q: Tensor, T: Tensor, W: Tensor, theta: Tensor, S: Tensor, res: Tensor,
                 wanted: int, keep_basis: bool, scale: float) -> KrylovRun:
    """The run's ``wanted`` Ritz pairs and residual factor; with ``keep_basis``
    also ``Q`` and ``A Q = Q T + W E_lastᵀ``. A float32 basis is
    overwritten by its Ritz vectors (:func:`~curvprobe.linalg._krylov.combine_rows_`), returned in
    float32 (N, wanted): the basis and the vectors are never held in float64
    together."""
    size, b, device = Q.shape[1], W.shape[1], W.device
    S = S.to(device)
    S_last = S[size - b :, :wanted].T.contiguous()
    basis = image = None
    if keep_basis:
        basis, image = Q.clone(), Q @ T.to(device)
        image[:, size - b :] += W
    if Q.dtype == torch.float64:
        vectors = Q @ S[:, :wanted]
    else:
        combine_rows_(Q.T, S[:, :wanted].T, size)
        vectors = Q[:, :wanted].contiguous()
    return KrylovRun(theta[:wanted].to(device), vectors, res[:wanted].to(device), W, S_last, T, basis, image,
                     scale)
