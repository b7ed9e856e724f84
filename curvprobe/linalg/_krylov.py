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
* :func:`random_unit` — a unit vector drawn from ``N(0, I)`` on a CPU
  generator (the draws do not depend on the device), orthogonal to a basis.
* :func:`next_block` — an orthonormal basis of a residual block, with random
  replacements for columns that vanished (an invariant subspace was found).
* :class:`KrylovRun` — what one solver run returns: Ritz pairs and the factor
  ``A U − U Θ = F Sᵀ`` of their residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DGKS = 2**-0.5
"""Re-orthogonalise when a projection removed more than ``1 − 1/√2`` of a
column's norm (Daniel, Gragg, Kaufman & Stewart)."""


@dataclass
class KrylovRun:
    """One solver run: ``nev`` Ritz pairs and the factor of their residuals.

    Attributes
    ----------
    values : Tensor (nev,) float64
        Ritz values ``θ_1 ≥ … ≥ θ_nev``.
    vectors : Tensor (N, nev) float64
        Orthonormal Ritz vectors ``U``.
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
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    F: Tensor
    S: Tensor
    T: Tensor
    basis: Tensor | None = None
    image: Tensor | None = None


def orthonormalize_against(x: Tensor, Q: Tensor | None) -> Tensor:
    """Two Gram–Schmidt passes of the columns of ``x`` (N, b) against ``Q`` (N, m).

    Returns ``(I − Q Qᵀ)² x`` (N, b), not normalised; ``x`` itself if ``Q`` is
    None or has no columns.
    """
    if Q is not None and Q.shape[1]:
        for _ in range(2):
            x = x - Q @ (Q.T @ x)
    return x


def random_unit(n: int, generator: torch.Generator, device: torch.device,
                against: Tensor | None = None) -> Tensor:
    """A random unit vector (n,) float64 orthogonal to the columns of ``against``.

    Drawn from ``N(0, I_n)`` on ``generator`` (CPU), moved to ``device``,
    orthogonalised by :func:`orthonormalize_against` and normalised.
    """
    x = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
    x = orthonormalize_against(x[:, None], against)[:, 0]
    return x / x.norm()


def next_block(F: Tensor, Q: Tensor, generator: torch.Generator, floor: float) -> Tensor:
    """Orthonormal basis (N, b) of the residual block ``F`` (N, b).

    ``F`` is already orthogonal to ``Q`` (N, m); its columns are
    orthonormalised in turn, and a column with norm ≤ ``floor`` (an invariant
    subspace was found) is replaced by a fresh random direction orthogonal to
    ``Q`` and the columns before it.
    """
    X = F.clone()
    for j in range(X.shape[1]):
        x = orthonormalize_against(X[:, j : j + 1], X[:, :j])[:, 0]
        norm = float(x.norm())
        X[:, j] = x / norm if norm > floor else random_unit(
            F.shape[0], generator, F.device, torch.cat([Q, X[:, :j]], dim=1))
    return X


def project_out(W: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """``W − Q C`` (N, b) orthogonal to the orthonormal ``Q`` (N, m), and ``C = Qᵀ W`` (m, b).

    Classical Gram–Schmidt with the DGKS test: a second pass only when the
    first removed more than ``1 − 1/√2`` of a column's norm (the reads of
    ``Q`` dominate a Lanczos step's own cost). ``C`` sums the coefficients of
    both passes.
    """
    before = W.norm(dim=0)
    C = Q.T @ W
    W = torch.addmm(W, Q, C, alpha=-1)
    if bool((W.norm(dim=0) < DGKS * before).any()):
        C2 = Q.T @ W
        W.addmm_(Q, C2, alpha=-1)
        C += C2
    return W, C
