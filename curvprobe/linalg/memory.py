"""Memory model of :func:`~curvprobe.linalg.eigensolver.top_eigenspace`.

An eigensolve holds a Krylov basis of ``m`` (``basis_size``) vectors of
length ``N`` in ``basis_dtype`` (itemsize ``s``: 8 bytes for float64, 4 for
float32), float64 Ritz vectors, a few float64 working blocks of width ``b``
(the block size) and, at any moment, one operator product. With ``D``
wanted pairs and ``j`` guard steps the phases need, in bytes,

* **solve** (Lanczos): ``(m + b) N s + (D + 4 b) N · 8``; a Davidson warm
  start keeps ``Q`` and ``A Q``: ``2 m N s + 3 D N · 8``;
* **explicit certificate** (float32 basis only,
  :func:`~curvprobe.linalg._krylov.explicit_ritz`): ``(2 D + b) N · 8`` —
  the vectors and their image;
* **guard**: ``(D + f) N · 8 + (j + 1) N s + 3 N · 8``, with ``f = b`` (the
  Lanczos residual factor; float64 basis) or ``0`` (float32: residuals are
  explicit);
* **repair** (only when the guard finds a missed eigenvalue): a Lanczos run
  of up to ``D`` pairs on the deflated operator,
  ``(D + f) N · 8 + (m + 1) N s + (D + 3) N · 8`` (float32: at least the
  ``3 D N · 8`` of its explicit certificate);
* ``keep_basis``: ``2 m N · 8`` more, returned with the result.

The estimate is the largest phase plus ``hvp_bytes``, the working memory of
one operator product (for a Hessian, dominated by the model's activations
and their double-backward buffers over one chunk, not by ``N``). For
``m ≫ D`` it is ``≈ m · N · s + one HVP``, and a float32 basis halves it;
with the default ``m = 3 D`` the float64 Ritz vectors take a comparable
share (``D = 20``: 840 N bytes in float64 against 588 N in float32, the
repair phase; 680 N against 436 N without a repair). The measured peaks are
in ``docs/performance.md``.
"""

from __future__ import annotations

import torch

from curvprobe.linalg._krylov import BASIS_DTYPES


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
        ``j``, the guard's Lanczos steps.
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
    explicit = basis_dtype != torch.float64
    f = 0 if explicit else b
    phases = [(m + b) * N * s + (D + 4 * b) * N * 8,
              (D + f) * N * 8 + (guard_steps + 1) * N * s + 3 * N * 8,
              (D + f) * N * 8 + (m + 1) * N * s + (D + 3) * N * 8]
    if warm_start:
        phases.append(2 * m * N * s + 3 * D * N * 8)
    if explicit:
        phases += [(2 * D + b) * N * 8, 3 * D * N * 8]
    kept = 2 * m * N * 8 if keep_basis else 0
    return int(max(phases) + kept + hvp_bytes)
