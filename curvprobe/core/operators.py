"""Symmetric linear operators on flat parameter vectors.

:class:`LinearOperator` holds what every operator shares (shape checks, the
matvec counter, the scipy adapter); a subclass implements ``_matmat`` only.
:class:`HessianOperator` is ``H^(k)(w) = ∇²L_k(w)`` through exact HVPs of a
:class:`~curvprobe.core.problem.Problem` (typed by :class:`HessianSource`, the
part of it the operator calls, so that this module does not import
``problem``, which imports it); :class:`MatrixOperator` wraps a dense
symmetric matrix (ground truth in tests and synthetic problems);
:class:`DeflatedOperator` is ``P A P`` with ``P = I − V Vᵀ``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import Tensor


class HessianSource(Protocol):
    """What :class:`HessianOperator` calls on its problem: the methods of
    :class:`~curvprobe.core.problem.Problem` it needs (that class satisfies it)."""

    @property
    def num_params(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def sample_range(self, k: int | None, start: int = 0) -> tuple[int, int]: ...

    def point(self, w: Tensor | None) -> Tensor: ...

    def hvp(self, v: Tensor, k: int | None = None, w: Tensor | None = None, *,
            start: int = 0, mode: str | None = None) -> Tensor: ...


class LinearOperator:
    """A symmetric ``N × N`` operator applied to float64 column blocks.

    ``num_matvecs`` counts vectors: one ``matmat`` on ``m`` columns adds ``m``.
    ``cost`` counts work in units of one product: ``num_matvecs`` plus the
    fractional cost of images carried over from another operator
    (:meth:`carry`).
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.shape = (int(n), int(n))
        self.dtype = torch.float64
        self.device = torch.device(device)
        self.num_matvecs = 0
        self.cost = 0.0

    def _matmat(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for ``V`` of shape (N, m); float64 (N, m)."""
        if V.dim() != 2 or V.shape[0] != self.shape[0]:
            raise ValueError(f"matmat expects shape ({self.shape[0]}, m), got {tuple(V.shape)}")
        self.num_matvecs += V.shape[1]
        self.cost += V.shape[1]
        return self._matmat(V.to(self.device, torch.float64))

    def carry(self, other: LinearOperator, V: Tensor, AV: Tensor, *,
              budget: float = float("inf")) -> Tensor | None:
        """``A V`` (N, m) from the known image ``AV = B V`` under another
        operator ``B``, when that costs at most ``budget`` products (in
        :attr:`cost` units); None when this operator cannot be derived from
        ``other`` within the budget (the default: never)."""
        return None

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for ``v`` of shape (N,); float64 (N,)."""
        if v.dim() != 1 or v.shape[0] != self.shape[0]:
            raise ValueError(f"matvec expects shape ({self.shape[0]},), got {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, x: Tensor) -> Tensor:
        return self.matvec(x) if x.dim() == 1 else self.matmat(x)

    def to_scipy(self) -> spla.LinearOperator:
        """A :class:`scipy.sparse.linalg.LinearOperator` view (float64, numpy in
        and out); its products go through this operator and are counted."""

        def mm(x: np.ndarray) -> np.ndarray:
            X = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(self.shape[0], -1),
                                device=self.device)
            return self.matmat(X).cpu().numpy()

        def mv(x: np.ndarray) -> np.ndarray:
            return mm(x)[:, 0]

        return spla.LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm,
                                   dtype=np.float64)


class HessianOperator(LinearOperator):
    """``H v`` with ``H = ∇²L(w)``, the Hessian of the mean loss over samples
    ``[start, k)`` of ``problem`` at ``w`` (default ``w*``)."""

    def __init__(self, problem: HessianSource, k: int | None = None, w: Tensor | None = None,
                 *, start: int = 0) -> None:
        super().__init__(problem.num_params, problem.device)
        start, stop = problem.sample_range(k, start)
        self.problem, self.start, self.k = problem, start, stop
        self.w = problem.point(w)

    def _matmat(self, V: Tensor) -> Tensor:
        return self.problem.hvp(V, self.k, self.w, start=self.start)

    def carry(self, other: LinearOperator, V: Tensor, AV: Tensor, *,
              budget: float = float("inf")) -> Tensor | None:
        """``H V`` from ``AV = H_0 V`` with ``H_0`` the Hessian over a prefix
        ``[start, k_0)`` of this operator's samples ``[start, k)`` at the same
        point: the mean over ``k`` samples is the weighted mean

            H V = ((k_0 − start) H_0 V + (k − k_0) H_new V) / (k − start),

        so only the ``k − k_0`` new samples need HVPs; ``cost`` grows by
        ``m (k − k_0) / (k − start)``. None for any other operator, or when
        that cost exceeds ``budget``."""
        if not (isinstance(other, HessianOperator) and other.problem is self.problem
                and other.start == self.start and self.start < other.k <= self.k
                and torch.equal(other.w, self.w)):
            return None
        n0, n1 = other.k - self.start, self.k - self.start
        work = V.shape[1] * (n1 - n0) / n1
        if work > budget:
            return None
        if n0 == n1:
            return AV.clone()
        new = self.problem.hvp(V, self.k, self.w, start=other.k)
        self.cost += work
        return (n0 * AV + (n1 - n0) * new) / n1


class MatrixOperator(LinearOperator):
    """A dense symmetric matrix ``A`` (N, N) as an operator."""

    def __init__(self, A: Tensor | np.ndarray) -> None:
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square, got shape {tuple(A.shape)}")
        super().__init__(A.shape[0], A.device)
        self.A = A

    def _matmat(self, V: Tensor) -> Tensor:
        return self.A @ V


class DeflatedOperator(LinearOperator):
    """``P A P + c V Vᵀ`` with ``P = I − V Vᵀ`` for orthonormal ``V`` (N, r):
    the operator restricted to the orthogonal complement of ``span(V)``, with
    ``span(V)`` moved to the eigenvalue ``c`` (``shift``, default 0). A
    Krylov run from a start ``⟂ V`` never leaves the complement in exact
    arithmetic; in floating point its round-off has a component in
    ``span(V)``, which a run converges to when ``c`` is an extreme of the
    spectrum (``c = 0`` below a positive spectrum, for a search for the
    smallest eigenvalues): a shift into the interior keeps it out of reach.
    Each product is also counted by the wrapped operator."""

    def __init__(self, op: LinearOperator, V: Tensor, shift: float = 0.0) -> None:
        super().__init__(op.shape[0], op.device)
        self.op, self.V, self.shift = op, V, float(shift)

    def _project(self, X: Tensor) -> Tensor:
        return X - self.V @ (self.V.T @ X)

    def _matmat(self, X: Tensor) -> Tensor:
        out = self._project(self.op.matmat(self._project(X)))
        return out if self.shift == 0.0 else out + self.shift * (self.V @ (self.V.T @ X))
