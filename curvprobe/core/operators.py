"""Symmetric linear operators on flat parameter vectors.

:class:`LinearOperator` holds what every operator shares (shape checks, the
matvec counter, the scipy adapter); a subclass implements ``_matmat`` only.
:class:`HessianOperator` is ``H^(k)(w) = ∇²L_k(w)`` through exact HVPs of a
:class:`~curvprobe.core.problem.Problem` (typed by :class:`HessianSource`, the
part of it the operator calls, so that this module does not import
``problem``, which imports it); :class:`MatrixOperator` wraps a dense
symmetric matrix (ground truth in tests and synthetic problems);
:class:`DeflatedOperator` is ``P A P`` with ``P = I − V Vᵀ``.

Parameter blocks and the Gauss–Newton matrix:

* :class:`ParameterBlock` — a subset ``B`` of the problem's parameters (whole
  named tensors), where it lives in the flat vector, and the maps between a
  block vector ``x ∈ R^{|B|}`` and the flat ``w`` (:func:`parameter_block`
  resolves names, globs, a module or a predicate).
* :class:`BlockHessianOperator` — ``H_BB = ∇²_B L(w)``, the Hessian of the
  mean loss with respect to the block's parameters, the others held at
  ``w``: an operator of size ``|B|`` whose products differentiate the loss
  with respect to the block alone: only the block's tensors depend on the
  block vector (:meth:`ParameterBlock.named`), so the reverse passes stop at
  the earliest block parameter and no other weight's gradient is formed (on
  tiny-gpt, 64 samples, one thread: 2.4 ms a column for ``lm_head``, 26 for
  ``blocks.1.*``, against 60–80 for the full Hessian; ``benchmarks/toolkit.py``). ``H_BB`` is exactly
  the (B, B) submatrix of the full Hessian.
* :class:`GGNOperator` — the generalized Gauss–Newton matrix
  ``G = (1/n) Σ_i J_iᵀ ∇²_f ℓ_i J_i`` of a loss ``ℓ_i = ℓ(f(w; x_i), y_i)``
  composed of the model's outputs ``f`` and a loss of the outputs, with
  ``J_i = ∂f(w; x_i)/∂w`` (on a block ``B`` when given). ``G v`` is one
  ``jvp`` through the model (``J v``), one Hessian-vector product of the loss
  in output space, and one ``vjp`` back (``Jᵀ u``). ``G`` is symmetric, and
  positive semi-definite whenever the loss is convex in the outputs
  (cross-entropy: ``∇²_z ℓ = diag(p) − p pᵀ``; squared error: ``2 I`` per
  output), whatever the model — unlike the Hessian, which adds
  ``Σ_c (∂ℓ/∂f_c) ∇² f_c``.

The block and GGN products are built from closures of the problem (its
chunked losses, its HVP kernel, its model outputs and loss), typed by
:class:`ProblemSource`, so this module never imports ``problem``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

HVPKernel = Callable[[Callable[[Tensor], Tensor], Tensor, Tensor, Tensor], None]
"""``(f, x, V, out)``: ``out += ∇²f(x) V`` in place, for a scalar ``f`` of
``x`` (n,), ``V`` (n, m) of any floating dtype and a float64 ``out`` (n, m)."""

ParameterSpec = str | Iterable[str] | nn.Module | Callable[[str], bool]
"""A parameter subset: a name or shell glob, several of them, a module (its
parameters), or a predicate on parameter names."""


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
            start: int = 0, mode: str | None = None, out: Tensor | None = None) -> Tensor: ...


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

    def _matmat(self, X: Tensor) -> Tensor:
        # P A P X + c V Vᵀ X with no N-sized temporary beyond P X and the product
        C = self.V.T @ X
        out = self.op.matmat(torch.addmm(X, self.V, C, alpha=-1))
        out.addmm_(self.V, self.V.T @ out, alpha=-1)
        return out if self.shift == 0.0 else out.addmm_(self.V, C, alpha=self.shift)


class ProblemSource(Protocol):
    """What :class:`BlockHessianOperator` and :class:`GGNOperator` call on
    their problem (:class:`~curvprobe.core.problem.Problem` satisfies it)."""

    @property
    def num_params(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    dtype: torch.dtype
    batch_size: int
    hvp_mode: str

    def sample_range(self, k: int | None, start: int = 0) -> tuple[int, int]: ...

    def point(self, w: Tensor | None) -> Tensor: ...

    def local_chunks(self, start: int, stop: int, size: int | None = None) -> Iterator[tuple[int, int]]: ...

    def functional_params(self, w: Tensor) -> dict[str, Tensor]: ...

    def loss_on(self, params: Mapping[str, Tensor], batch: Any) -> Tensor: ...

    def chunk_batch(self, a: int, b: int) -> Any: ...

    def all_reduce(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class ParameterBlock:
    """A subset of a problem's parameters (whole named tensors).

    Attributes
    ----------
    names : tuple of str
        The parameters, in the order of the flat vector.
    slices : tuple of slice
        Where each lives in the flat vector ``w`` (N,).
    num_params : int
        Length of the full flat vector ``N``.
    """

    names: tuple[str, ...]
    slices: tuple[slice, ...]
    num_params: int

    @property
    def size(self) -> int:
        """``|B|``: the block's number of scalar parameters."""
        return sum(s.stop - s.start for s in self.slices)

    def take(self, w: Tensor) -> Tensor:
        """The block's entries of flat vectors: (N,) → (|B|,), (N, m) → (|B|, m)."""
        return torch.cat([w[s] for s in self.slices])

    def named(self, x: Tensor, base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The named tensors ``base`` (name → tensor, e.g. the model's
        parameters at ``w``) with the block's taken from ``x`` (|B|,) and
        shaped like theirs. Only those depend on ``x``: autograd records
        just what they reach, and forms no other weight's gradient."""
        out, offset = dict(base), 0
        for name, s in zip(self.names, self.slices):
            out[name] = x[offset:offset + s.stop - s.start].view(base[name].shape)
            offset += s.stop - s.start
        return out

    def scatter(self, x: Tensor) -> Tensor:
        """Block vectors (|B|,) or (|B|, m) as flat ones, zero off the block."""
        out = x.new_zeros((self.num_params, *x.shape[1:]))
        offset = 0
        for s in self.slices:
            out[s] = x[offset:offset + s.stop - s.start]
            offset += s.stop - s.start
        return out


def parameter_block(model: nn.Module, slices: Mapping[str, slice], params: ParameterSpec
                    ) -> ParameterBlock:
    """The :class:`ParameterBlock` of ``params`` among the trainable
    parameters ``slices`` (name → slice of the flat vector, in order) of ``model``.

    ``params`` is a parameter name or a shell glob (``"blocks.0.*"``), an
    iterable of them (each must match), an ``nn.Module`` (the trainable
    parameters it holds, found by identity, so a submodule of ``model``
    works), or a predicate ``name -> bool``. An empty selection, or a name
    that matches nothing, is a ``ValueError`` that lists the valid names.
    """
    names = list(slices)
    if isinstance(params, nn.Module):
        owned = {id(p) for p in params.parameters()}
        chosen = {n for n, p in model.named_parameters() if id(p) in owned}
    elif callable(params):
        chosen = {n for n in names if params(n)}
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = set()
        for pattern in patterns:
            hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
            if not hits:
                raise ValueError(f"no trainable parameter matches {pattern!r}; valid: {', '.join(names)}")
            chosen |= hits
    picked = tuple(n for n in names if n in chosen)
    if not picked:
        raise ValueError(f"params selects no trainable parameter; valid: {', '.join(names)}")
    end = max(s.stop for s in slices.values())
    return ParameterBlock(picked, tuple(slices[n] for n in picked), end)


class BlockHessianOperator(LinearOperator):
    """``H_BB v``: the Hessian of the mean loss over samples ``[start, k)``
    with respect to the parameters of ``block``, the others held at ``w``
    (default ``w*``); an operator of size ``|B|``.

    Each product differentiates ``x ↦ Σ_i ℓ_i`` with the block's tensors taken
    from ``x`` and the others at ``w`` (:meth:`ParameterBlock.named`) over chunks with
    the problem's HVP ``kernel`` (chosen as for the full HVP,
    :func:`~curvprobe.core.problem.hvp_kernel`), accumulates in
    float64 and divides by the sample count (all-reduced over ranks).
    """

    def __init__(self, problem: ProblemSource, block: ParameterBlock, kernel: Callable[[str, int, int, int],
                 tuple[HVPKernel, int]], k: int | None = None, w: Tensor | None = None, *,
                 start: int = 0) -> None:
        super().__init__(block.size, problem.device)
        start, stop = problem.sample_range(k, start)
        self.problem, self.block, self.kernel = problem, block, kernel
        self.start, self.k = start, stop
        self.w = problem.point(w)
        self.x0 = block.take(self.w)

    def _matmat(self, V: Tensor) -> Tensor:
        problem = self.problem
        chunk_hvp, size = self.kernel(problem.hvp_mode, V.shape[1], problem.batch_size, self.k - self.start)
        total = torch.zeros(V.shape, dtype=torch.float64, device=self.device)
        base = problem.functional_params(self.w)
        for a, b in problem.local_chunks(self.start, self.k, size):

            def chunk_loss(x: Tensor, a: int = a, b: int = b) -> Tensor:
                return problem.loss_on(self.block.named(x, base), problem.chunk_batch(a, b)).sum()

            chunk_hvp(chunk_loss, self.x0, V, total)
        return problem.all_reduce(total) / (self.k - self.start)


class GGNOperator(LinearOperator):
    """``G v`` with ``G = (1/n) Σ_{i∈[start,k)} J_iᵀ ∇²_f ℓ_i J_i`` at ``w``
    (module docstring), on all parameters or on a :class:`ParameterBlock`.

    ``outputs(params, batch)`` is the model's output on a chunk with the named
    parameters ``params`` (:meth:`ParameterBlock.named` of the block's vector
    on a block: the others are constants) and
    ``loss(outputs, batch)`` the per-sample losses of those outputs; the
    problem composes the two. Per chunk of ``batch_size // m`` samples, the
    ``m`` columns are vmapped through ``jvp`` of the outputs, the
    Hessian-vector product of the summed loss in output space and ``vjp``
    back; sums are float64.
    """

    def __init__(self, problem: ProblemSource, outputs: Callable[[dict[str, Tensor], Any], Any],
                 loss: Callable[[Any, Any], Tensor], k: int | None = None, w: Tensor | None = None, *,
                 start: int = 0, block: ParameterBlock | None = None) -> None:
        super().__init__(problem.num_params if block is None else block.size, problem.device)
        start, stop = problem.sample_range(k, start)
        self.problem, self.outputs, self.loss, self.block = problem, outputs, loss, block
        self.start, self.k = start, stop
        self.w = problem.point(w)
        self.x0 = self.w if block is None else block.take(self.w)

    def _named(self, x: Tensor) -> dict[str, Tensor]:
        if self.block is None:
            return self.problem.functional_params(x)
        return self.block.named(x, self.problem.functional_params(self.w))

    def _matmat(self, V: Tensor) -> Tensor:
        problem = self.problem
        total = torch.zeros(V.shape, dtype=torch.float64, device=self.device)
        Vd = V.to(problem.dtype)
        size = max(1, problem.batch_size // V.shape[1])
        for a, b in problem.local_chunks(self.start, self.k, size):
            batch = problem.chunk_batch(a, b)
            total += self._chunk_product(batch, Vd).double()
        return problem.all_reduce(total) / (self.k - self.start)

    def _chunk_product(self, batch: Any, V: Tensor) -> Tensor:
        """``Σ_{i∈chunk} J_iᵀ ∇²ℓ_i J_i V`` for the columns of ``V`` (n, m)."""

        def model(x: Tensor) -> Any:
            return self.outputs(self._named(x), batch)

        def summed_loss(out: Any) -> Tensor:
            return self.loss(out, batch).sum()

        pulled = vjp(model, self.x0)
        out, pullback = pulled[0], pulled[1]
        loss_grad = grad(summed_loss)

        def column(v: Tensor) -> Tensor:
            Jv = jvp(model, (self.x0,), (v,))[1]
            HJv = jvp(loss_grad, (out,), (Jv,))[1]
            return pullback(HJv)[0]

        return vmap(column, in_dims=1, out_dims=1)(V)
