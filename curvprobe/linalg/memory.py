"""Memory model of :func:`~curvprobe.linalg.eigensolver.top_eigenspace`.

An eigensolve holds a Krylov basis of ``m`` (``basis_size``) vectors of
length ``N`` in ``basis_dtype`` (itemsize ``s``: 8 bytes for float64, 4 for
float32), the ``D`` wanted float64 Ritz vectors once the solve ends, a few
float64 working blocks of width ``b`` (the block size) and, at any moment,
one operator product. With ``j`` guard steps the phases need, in bytes:

float64 basis (``s = 8``)

* **solve** (Lanczos): ``(m + b) N · 8 + (D + 4 b) N · 8`` (the Ritz
  vectors are formed beside the basis);
* **guard**: ``(D + b) N · 8 + (j + 1) N · 8 + 3 N · 8`` (the found
  vectors, their residual factor, the guard's basis);
* **repair** (only when the guard finds a missed eigenvalue): a Lanczos run
  on the deflated operator, ``(D + b) N · 8 + (m + 1) N · 8 + (D + 3) N · 8``.

float32 basis (``s = 4``): a memory-bound solve, whose found vectors stay
in float32 until its end

* **solve**: ``(m + b + D) N s + 2 b N · 8`` — the Ritz vectors are formed
  in the basis rows and copied out in float32
  (:func:`~curvprobe.linalg.lanczos.thick_restart_lanczos`), beside the
  block and its image in float64 (projected in place,
  :func:`~curvprobe.linalg._krylov.subtract_basis_matmul_`); then they are
  copied into a float32 buffer with ``R`` =
  :data:`~curvprobe.linalg.guard.REPAIR_SPARE` free columns, ``f = D + R``;
* **guard**: ``f N s + 6 N · 8`` whatever its steps ``j``: the guard is
  streamed (:func:`~curvprobe.linalg.guard.streamed_guard_run`: two Lanczos
  vectors, a kernel vector per level, the projected input and the product;
  no factor) and deflates the float32 vectors exactly
  (:class:`~curvprobe.linalg.guard.RoundedDeflatedOperator`);
* **repair**: ``f N s + (m_r + 1 + r) N s + 3 N · 8`` for ``r`` missed
  pairs solved (the model takes ``r = R = 2``: one eigenvalue missed,
  solved with one more) in a basis of ``m_r = max(m − D − R − r − 2, 2r + 2)``
  rows (:func:`~curvprobe.linalg.guard.repair_basis_size`: at most the
  solve's peak); the pairs are merged into the free columns, no copy;
* **certificate**: ``f N s + D N · 8`` while the ``D`` selected vectors
  (selected in place, :func:`~curvprobe.linalg._krylov.select_columns_`)
  are copied to float64, then ``D N · 8 + c N · 8`` with ``c`` =
  :data:`~curvprobe.linalg._krylov.EXPLICIT_BLOCK` columns per product
  (:func:`~curvprobe.linalg._krylov.explicit_pairs`: no image is stored).

Either way a Davidson warm start keeps ``Q`` and ``A Q`` in buffers of
``m + B`` rows (``B`` = :data:`~curvprobe.linalg.davidson.DAVIDSON_BLOCK`)
beside the Ritz vectors, their images and residuals and one block:
``2 (m + B) N s + (3 D + 2 B) N · 8``; ``keep_basis`` adds ``2 m N · 8``,
returned with the result. The
estimate is the largest phase plus ``hvp_bytes``, the working memory of one
operator product (for a Hessian, dominated by the model's activations and
their double-backward buffers over one chunk, not by ``N``: the product
accumulates into its float64 output in place,
:meth:`~curvprobe.core.problem.Problem.hvp`). For ``m ≫ D`` it is
``≈ m · N · s + one HVP`` and a float32 basis halves it; with the default
``m = 3 D`` the Ritz vectors take a comparable share (``D = 20``, ``m = 60``:
840 N bytes in float64, in a repair, against 340 N in float32, at the end
of the solve). The measured peaks are in ``docs/toolkit.md``.
"""

from __future__ import annotations

import torch

from curvprobe.linalg._krylov import BASIS_DTYPES, EXPLICIT_BLOCK
from curvprobe.linalg.davidson import DAVIDSON_BLOCK
from curvprobe.linalg.guard import REPAIR_SPARE, repair_basis_size

_STREAMED_GUARD_VECTORS = 6  # q_{i−1}, q_i, two kernel vectors, the projected input and the product


def eigensolver_memory(N: int, basis_size: int, basis_dtype: torch.dtype = torch.float64, *,
                       D: int = 1, block_size: int = 1, guard_steps: int = 10,
                       keep_basis: bool = False, warm_start: bool = False,
                       hvp_bytes: int = 0) -> int:
    """Estimated peak bytes of an eigensolve on an ``N``-dimensional operator.

    Parameters
    ----------
    N : int
        Operator size (number of parameters).
    basis_size : int
        Basis bound ``m`` as :func:`~curvprobe.linalg.eigensolver.top_eigenspace`
        uses it (its default is ``max(3 D, D + 40)``).
    basis_dtype : torch.float64 or torch.float32
        Basis storage.
    D : int
        Wanted eigenpairs.
    block_size : int
        ``b``: 1 for ``method="lanczos"``, the block for ``method="block"``.
    guard_steps : int
        ``j``, the guard's Lanczos steps (float64 basis: the streamed guard of a float32 one holds no steps).
    keep_basis, warm_start : bool
        A kept basis and its image; a Davidson warm start.
    hvp_bytes : int
        Working memory of one operator product, added as is.

    Returns
    -------
    int
        Bytes: the largest phase of the module docstring, plus ``hvp_bytes``.
    """
    if basis_dtype not in BASIS_DTYPES:
        raise ValueError(f"basis_dtype must be torch.float64 or torch.float32, got {basis_dtype!r}")
    if min(N, basis_size, D, block_size) < 1 or min(hvp_bytes, guard_steps) < 0:
        raise ValueError("N, basis_size, D and block_size must be >= 1, hvp_bytes and guard_steps >= 0")
    s, m, b = torch.finfo(basis_dtype).bits // 8, int(basis_size), int(block_size)
    if basis_dtype == torch.float64:
        phases = [(m + b) * N * 8 + (D + 4 * b) * N * 8,
                  (D + b) * N * 8 + (guard_steps + 1) * N * 8 + 3 * N * 8,
                  (D + b) * N * 8 + (m + 1) * N * 8 + (D + 3) * N * 8]
    else:
        r, c, f = REPAIR_SPARE, EXPLICIT_BLOCK, D + REPAIR_SPARE
        phases = [(m + b + D) * N * s + 2 * b * N * 8,
                  f * N * s + _STREAMED_GUARD_VECTORS * N * 8,
                  f * N * s + (repair_basis_size(m, D, r, basis_dtype, r) + 1 + r) * N * s + 3 * N * 8,
                  f * N * s + D * N * 8, D * N * 8 + c * N * 8]
    if warm_start:
        phases.append(2 * (m + DAVIDSON_BLOCK) * N * s + (3 * D + 2 * DAVIDSON_BLOCK) * N * 8)
    kept = 2 * m * N * 8 if keep_basis else 0
    return int(max(phases) + kept + hvp_bytes)
