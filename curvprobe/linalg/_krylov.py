"""Building blocks shared by the Krylov solvers of :mod:`curvprobe.linalg`.

Private module with public names: :mod:`~curvprobe.linalg.lanczos`,
:mod:`~curvprobe.linalg.davidson`, :mod:`~curvprobe.linalg.guard`,
:mod:`~curvprobe.linalg.power` and :mod:`~curvprobe.linalg.eigensolver`
import from here; nothing outside :mod:`curvprobe.linalg` should.

All vectors are float64 columns of length ``N`` (the operator's size); a block
is an ``(N, b)`` tensor, an orthonormal basis an ``(N, m)`` tensor ``Q`` with
``Qᵀ Q = I``.

* :func:`orthonormalize_against` — ``x ← (I − Q Qᵀ)² x`` (two classical
  Gram–Schmidt passes), no normalisation.
* :func:`project_out` — ``W − Q C`` with ``C = Qᵀ W``, one pass plus a second
  one only where the DGKS test asks for it (a column lost more than
  ``1 − 1/√2`` of its norm).
* :func:`random_unit` — a unit vector drawn from ``N(0, I)`` on the
  generator's device, orthogonal to a basis.
* :func:`next_block` — an orthonormal basis of a residual block, with random
  replacements for columns that vanished (an invariant subspace was found).
* :class:`KrylovRun` — what one solver run returns: Ritz pairs and the factor
  ``A U − U Θ = F Sᵀ`` of their residuals.
* :func:`ritz_order` — which Ritz values a solve wants (:data:`WHICH`).
* :func:`basis_t_matmul`, :func:`basis_matmul` — ``Qᵀ W`` and ``Q C`` for a
  basis stored in float32: float64 arithmetic on chunks of rows, so no
  float64 copy of the basis is ever made; :func:`combine_rows_` — ``Q ← Q C``
  in place for a basis stored as rows (a thick restart).
* :func:`explicit_pairs` — orthonormalised vectors as Rayleigh-quotient
  pairs, with residuals from real operator products.

Basis storage (``basis_dtype``): a basis may be stored in float32 to halve
its memory; every product with it (Gram coefficients, projections,
combinations) is then computed in float64 on row chunks of at most
:data:`GRAM_CHUNK_BYTES` bytes, and the operator is applied to the stored
(rounded) vectors, so the Lanczos relation holds for what is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator

DGKS = 2**-0.5
"""Re-orthogonalise when a projection removed more than ``1 − 1/√2`` of a
column's norm (Daniel, Gragg, Kaufman & Stewart)."""

WHICH = ("largest", "smallest", "both_ends", "magnitude")
"""Which end of the spectrum a solve wants: the algebraically largest, the
algebraically smallest, ``⌈D/2⌉`` largest and ``⌊D/2⌋`` smallest (scipy's
``"BE"``), or the largest in absolute value."""

BASIS_DTYPES = (torch.float64, torch.float32)
"""Storage dtypes of a Krylov basis (arithmetic is float64 either way)."""

GRAM_CHUNK_BYTES = 2**22
"""Bytes of the float64 copy of one row chunk of a float32 basis (4 MiB)."""

EXPLICIT_BLOCK = 4
"""Columns per batched product of :func:`explicit_pairs`: its memory beyond
the vectors is this many float64 N-vectors and one product's working set."""


@dataclass
class KrylovRun:
    """One solver run: ``nev`` Ritz pairs and the factor of their residuals.

    Attributes
    ----------
    values : Tensor (nev,) float64
        Ritz values ``θ_1 ≥ … ≥ θ_nev``.
    vectors : Tensor (N, nev) float64
        Orthonormal Ritz vectors ``U`` (float32 from a run on a float32
        basis: the rounded combination, orthonormal to its rounding, its
        values and residuals estimates, certified at the end of the solve by
        :func:`explicit_pairs`).
    residuals : Tensor (nev,) float64
        Absolute residual norms ``‖A u_i − θ_i u_i‖``.
    F, S : Tensor (N, b) and (nev, b) float64
        The residual factor ``A U − U Θ = F Sᵀ``: for Lanczos ``F`` is the
        residual of the last block and ``S`` the last ``b`` rows of the Ritz
        coefficients; for Davidson ``F`` holds the residuals and ``S = I``.
    T : Tensor (m, m) float64
        The final projected matrix ``Qᵀ A Q`` of the basis ``Q`` (N, m).
    basis, image : Tensor (N, m) or None
        With ``keep_basis``: the final basis ``Q`` and its image ``A Q``.
    spare : int or None
        None: ``vectors`` may share storage with other tensors. An int:
        ``vectors`` are the leading columns of a row-major float32 buffer
        (N, p + spare) the solve owns, with ``spare`` free columns after them
        (a memory-bound solve: the guard merges repaired pairs into them and
        the solve selects its ``D`` pairs in place, :func:`select_columns_`,
        before certifying them in float64).
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    F: Tensor
    S: Tensor
    T: Tensor
    basis: Tensor | None = None
    image: Tensor | None = None
    scale: float = math.nan
    spare: int | None = None


def ritz_order(theta: Tensor, which: str) -> Tensor:
    """Preference order of Ritz values ``theta`` (s,), sorted decreasing: an
    index tensor (s,) whose first ``nev`` entries are the wanted pairs for
    any ``nev``.

    ``"largest"``: as sorted; ``"smallest"``: reversed; ``"both_ends"``:
    largest, smallest, second largest, second smallest, …; ``"magnitude"``:
    by ``|θ|`` decreasing (stable).
    """
    s = theta.shape[0]
    if which == "largest":
        return torch.arange(s, device=theta.device)
    if which == "smallest":
        return torch.arange(s - 1, -1, -1, device=theta.device)
    if which == "both_ends":
        up = torch.arange(s, device=theta.device)
        return torch.stack([up, up.flip(0)], dim=1).reshape(-1)[:s]
    if which == "magnitude":
        return theta.abs().argsort(descending=True, stable=True)
    raise ValueError(f"unknown which {which!r}; valid: {', '.join(WHICH)}")


def _row_chunk(N: int, m: int) -> int:
    """Rows of an (N, m) float64 chunk of at most :data:`GRAM_CHUNK_BYTES` bytes."""
    return max(1, min(N, GRAM_CHUNK_BYTES // (8 * max(m, 1))))


def basis_t_matmul(Q: Tensor, W: Tensor) -> Tensor:
    """``Qᵀ W`` (m, b) in float64 for a basis ``Q`` (N, m) and ``W`` (N, b),
    each stored in float64 or float32. Float32 operands are read in float64
    row chunks (float64 products of the exactly converted entries, float64
    sums)."""
    if Q.dtype == W.dtype == torch.float64:
        return Q.T @ W
    step = _row_chunk(Q.shape[0], Q.shape[1] + W.shape[1])
    out = torch.zeros(Q.shape[1], W.shape[1], dtype=torch.float64, device=W.device)
    for a in range(0, Q.shape[0], step):
        out += Q[a:a + step].double().T @ W[a:a + step].double()
    return out


def basis_matmul(Q: Tensor, C: Tensor) -> Tensor:
    """``Q C`` (N, b) in float64 for a basis ``Q`` (N, m) stored in float64
    or float32 and float64 ``C`` (m, b) (float32 ``Q``: float64 row chunks)."""
    if Q.dtype == torch.float64:
        return Q @ C
    step = _row_chunk(Q.shape[0], Q.shape[1])
    out = torch.empty(Q.shape[0], C.shape[1], dtype=torch.float64, device=C.device)
    for a in range(0, Q.shape[0], step):
        out[a:a + step] = Q[a:a + step].double() @ C
    return out


def combine_rows_(rows: Tensor, C: Tensor, size: int) -> None:
    """``rows[:p] ← C rows[:size]`` in place for a basis stored as rows
    (``rows`` (≥ size, N)) and ``C`` (p, size), ``p ≤ size``: a float32
    basis in float64 column chunks (each reads its own columns before
    writing them), so no copy of the basis is made."""
    coefficients = C.to(rows.device)
    p = coefficients.shape[0]
    if rows.dtype == torch.float64:
        rows[:p] = coefficients @ rows[:size]
        return
    step = max(1, GRAM_CHUNK_BYTES // (8 * size))
    for a in range(0, rows.shape[1], step):
        rows[:p, a : a + step] = coefficients @ rows[:size, a : a + step].double()


def orthonormalize_against(x: Tensor, Q: Tensor | None) -> Tensor:
    """Two Gram–Schmidt passes of the columns of ``x`` (N, b) against ``Q`` (N, m).

    Returns ``(I − Q Qᵀ)² x`` (N, b), not normalised; ``x`` itself if ``Q`` is
    None or has no columns.
    """
    if Q is not None and Q.shape[1]:
        for _ in range(2):
            x = x - Q @ (Q.T @ x) if Q.dtype == x.dtype else x - basis_matmul(Q, basis_t_matmul(Q, x))
    return x


def random_unit(n: int, generator: torch.Generator, device: torch.device,
                against: Tensor | None = None) -> Tensor:
    """A random unit vector (n,) float64 orthogonal to the columns of ``against``.

    Drawn from ``N(0, I_n)`` on ``generator`` (on its own device: no host
    round trip when it is the operator's), moved to ``device``,
    orthogonalised by :func:`orthonormalize_against` and normalised.
    """
    x = torch.randn(n, generator=generator, dtype=torch.float64, device=generator.device).to(device)
    x = orthonormalize_against(x[:, None], against)[:, 0]
    return x / x.norm()


def next_block(F: Tensor, Q: Tensor, generator: torch.Generator, floor: float,
               first_norm: float | None = None) -> Tensor:
    """Orthonormal basis (N, b) of the residual block ``F`` (N, b).

    ``F`` is already orthogonal to ``Q`` (N, m); its columns are
    orthonormalised in turn, and a column with norm ≤ ``floor`` (an invariant
    subspace was found) is replaced by a fresh random direction orthogonal to
    ``Q`` and the columns before it. ``first_norm``, if given, is
    ``‖F[:, 0]‖`` already read on the host (the first column has no column
    before it), so a single-vector step reads no norm here.
    """
    X = F.clone()
    for j in range(X.shape[1]):
        x = orthonormalize_against(X[:, j : j + 1], X[:, :j])[:, 0]
        norm = first_norm if j == 0 and first_norm is not None else float(x.norm())
        X[:, j] = x / norm if norm > floor else _replacement(generator, Q, X[:, :j])
    return X


def orthonormal_block(W: Tensor, gram: Tensor, Q: Tensor, generator: torch.Generator,
                      floor: float) -> Tensor:
    """Orthonormal basis (N, b) of the residual block ``W`` (N, b), ``W ⟂ Q``,
    from its Gram matrix ``gram = Wᵀ W`` (b, b) already on the host.

    Two Cholesky–QR passes, ``X = W L⁻ᵀ`` with ``gram = L Lᵀ``, then once more
    on ``X``: the host reads one more (b, b) Gram matrix and nothing of size
    N. ``L``'s diagonal holds the Gram–Schmidt norms of the columns; when one
    is ≤ ``floor`` (an invariant subspace) or the block is ill-conditioned
    (diagonal ratio below 1e-6, where one pass loses orthogonality), the
    block is orthonormalised column by column by :func:`next_block` instead.
    """
    L, info = torch.linalg.cholesky_ex(gram)
    diagonal = L.diagonal()
    if int(info) != 0 or float(diagonal.min()) <= max(floor, 1e-6 * float(diagonal.max())):
        return next_block(W, Q, generator, floor)
    X = W @ torch.linalg.inv(L).T.to(W.device)
    L2, info = torch.linalg.cholesky_ex((X.T @ X).cpu())
    return X @ torch.linalg.inv(L2).T.to(W.device) if int(info) == 0 else next_block(W, Q, generator, floor)


def _replacement(generator: torch.Generator, Q: Tensor, X: Tensor) -> Tensor:
    """A random unit vector orthogonal to the basis ``Q`` (N, m) and the
    float64 columns ``X`` (N, j)."""
    if Q.dtype == X.dtype:
        return random_unit(X.shape[0], generator, X.device, torch.cat([Q, X], dim=1))
    x = orthonormalize_against(random_unit(X.shape[0], generator, X.device, Q)[:, None], X)[:, 0]
    return x / x.norm()


def project_out(W: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """``W − Q C`` (N, b) orthogonal to the orthonormal ``Q`` (N, m), and ``C = Qᵀ W`` (m, b).

    Classical Gram–Schmidt with the DGKS test: a second pass only when the
    first removed more than ``1 − 1/√2`` of a column's norm (the reads of
    ``Q`` dominate a Lanczos step's own cost). ``C`` sums the coefficients of
    both passes. The test reads ``b`` flags on the host. ``Q`` may be stored
    in float32 (:func:`basis_t_matmul`); ``W`` and ``C`` are float64.
    """
    before = W.norm(dim=0)
    C = basis_t_matmul(Q, W)
    W = torch.addmm(W, Q, C, alpha=-1) if Q.dtype == W.dtype else subtract_basis_matmul_(W, Q, C)
    if bool((W.norm(dim=0) < DGKS * before).any()):
        C2 = basis_t_matmul(Q, W)
        if Q.dtype == W.dtype:
            W.addmm_(Q, C2, alpha=-1)
        else:
            subtract_basis_matmul_(W, Q, C2)
        C += C2
    return W, C


def subtract_basis_matmul_(W: Tensor, Q: Tensor, C: Tensor) -> Tensor:
    """``W ← W − Q C`` in place for float64 ``W`` (N, b), a float32 basis
    ``Q`` (N, m) and float64 ``C`` (m, b): float64 row chunks, no (N, b)
    temporary. Returns ``W``."""
    step = _row_chunk(Q.shape[0], Q.shape[1])
    for a in range(0, Q.shape[0], step):
        W[a:a + step] -= Q[a:a + step].double() @ C
    return W


def explicit_pairs(op: LinearOperator, X: Tensor, which: str = "largest",
                   scale: float = math.nan) -> KrylovRun:
    """The columns of ``X`` (N, p), orthonormalised, as Rayleigh-quotient
    pairs with residuals from real products: the certificate of a solve
    whose basis was stored in float32.

    ``X`` (float32 or float64) is orthonormalised in float64 by two
    Cholesky–QR passes (a float64 ``X`` in place, else a float64 copy
    ``U``); then ``θ_i = u_iᵀ A u_i`` and ``r_i = ‖A u_i − θ_i u_i‖`` come
    from ``p`` products, applied :data:`EXPLICIT_BLOCK` columns at a time
    and never stored: residuals of the returned float64 vectors
    themselves, not of a recurrence or of a stored image. Memory: ``U``
    and one block of :data:`EXPLICIT_BLOCK` products (N-vectors, float64).

    Returns
    -------
    KrylovRun
        The ``p`` pairs in the order of ``which`` (:func:`ritz_order` after
        sorting ``θ`` decreasing), absolute residuals, an empty residual
        factor ``F`` (N, 0), ``S`` (p, 0), ``T = diag(θ)`` on the host and
        ``scale`` as given.
    """
    U = X if X.dtype == torch.float64 else X.to(torch.float64, memory_format=torch.contiguous_format)
    for _ in range(2):
        R_chol = torch.linalg.cholesky(basis_t_matmul(U, U).cpu()).to(U.device)
        _rows_times_(U, torch.linalg.inv(R_chol).T)
    p = U.shape[1]
    theta = torch.empty(p, dtype=torch.float64, device=U.device)
    residuals = torch.empty_like(theta)
    for a in range(0, p, EXPLICIT_BLOCK):
        image = op.matmat(U[:, a:a + EXPLICIT_BLOCK])
        for j in range(image.shape[1]):  # column by column, in place: no block-sized temporaries
            u, Au = U[:, a + j], image[:, j]
            theta[a + j] = torch.dot(u, Au)
            residuals[a + j] = Au.sub_(u, alpha=float(theta[a + j])).norm()
    desc = theta.argsort(descending=True)
    order = desc[ritz_order(theta[desc], which)]
    if not torch.equal(order, torch.arange(p, device=order.device)):
        step = _row_chunk(U.shape[0], p)
        for a in range(0, U.shape[0], step):  # reorder the columns in place, row chunk by row chunk
            U[a:a + step] = U[a:a + step, order]
    theta, residuals = theta[order], residuals[order]
    return KrylovRun(theta, U, residuals, U[:, :0], torch.zeros(p, 0, dtype=torch.float64, device=U.device),
                     torch.diag(theta).cpu(), scale=scale)


def owned_buffer(X: Tensor, spare: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``X`` (N, p) copied (rounded to ``dtype``) into the leading columns of
    a new row-major buffer (N, p + spare); returns the (N, p) view (see
    ``KrylovRun.spare``)."""
    buffer = torch.empty(X.shape[0], X.shape[1] + spare, dtype=dtype, device=X.device)
    view = buffer[:, :X.shape[1]]
    view.copy_(X)
    return view


def append_columns_(X: Tensor, Y: Tensor) -> Tensor:
    """``[X, Y]`` (N, p + r) written in place into the free columns after
    ``X`` (N, p) in its owned row-major buffer (at least ``r`` of them, see
    ``KrylovRun.spare``); returns the widened view."""
    wide = torch.as_strided(X, (X.shape[0], X.shape[1] + Y.shape[1]), X.stride(), X.storage_offset())
    wide[:, X.shape[1]:] = Y
    return wide


def select_columns_(X: Tensor, order: Tensor) -> Tensor:
    """``X[:, order]`` (N, q) as a contiguous tensor on ``X``'s own storage,
    for ``X`` (N, p) the leading columns of a row-major buffer (N, W) it owns
    (``KrylovRun.spare`` not None): row chunk by row chunk, each chunk copied
    out before its rows are written (row ``a`` of the result lands at
    ``a q ≤ a W``, where no unread row lies), so no (N, q) copy is made. The
    buffer's last ``(W − q) N`` entries stay allocated, unused."""
    n, q, width = X.shape[0], order.numel(), X.stride(0)
    flat = torch.as_strided(X, (n * width,), (1,), X.storage_offset())
    step = _row_chunk(n, width)
    for a in range(0, n, step):
        rows = X[a:a + step][:, order]
        flat[a * q:a * q + rows.numel()] = rows.reshape(-1)
    return flat[:n * q].view(n, q)


def _rows_times_(X: Tensor, C: Tensor) -> Tensor:
    """``X C`` for ``X`` (N, p), ``C`` (p, q) with ``q ≤ p``, written into the
    first ``q`` columns of ``X`` row chunk by row chunk (no (N, q) copy);
    returns that (N, q) view."""
    step = _row_chunk(X.shape[0], X.shape[1])
    q = C.shape[1]
    for a in range(0, X.shape[0], step):
        X[a:a + step, :q] = X[a:a + step] @ C
    return X[:, :q]
