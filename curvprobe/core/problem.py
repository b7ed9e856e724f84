"""The empirical-loss problem: a model, a per-sample loss and ordered samples.

Notation (Kiselev & Grabovoy; ``docs/concepts.md``, "Samples, losses and
their derivatives"). Samples are ordered ``i = 1..n``; ``ℓ_i(w)`` is the loss
of sample ``i`` at the flat parameter vector ``w ∈ R^N``;

    L_k(w) = (1/k) Σ_{i≤k} ℓ_i(w),   g^(k) = ∇L_k,   H^(k) = ∇²L_k.

A :class:`Problem` evaluates losses, gradients and exact Hessian-vector
products (HVPs) of the mean loss over any contiguous sample range
``[start, stop)`` at any flat point ``w`` (default ``w*``, the model's own
parameters). Samples are processed in chunks of ``batch_size`` so peak memory
is bounded by one chunk; sums over chunks are accumulated in float64 and
divided by the sample count at the end (chunks are weighted by their size, so a
short last chunk does not bias the mean).

The model is never mutated: parameters are copied into a flat vector and the
model is evaluated with :func:`torch.func.functional_call`. Attention runs
through the twice-differentiable SDPA math kernel
(``sdpa_kernel(SDPBackend.MATH)``) on every path, so forward values, gradients
and HVPs come from one consistent computation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Dataset

from curvprobe.core.distributed import Shard, all_reduce_sum, shard
from curvprobe.core.operators import (
    BlockHessianOperator,
    GGNOperator,
    HessianOperator,
    HVPKernel,
    ParameterSpec,
    parameter_block,
)
from curvprobe.core.samples import Batch, DatasetSamples, Samples, TensorSamples, leaves, tree_map

HVP_MODES = ("auto", "double_backward", "forward_over_reverse", "batched_double_backward")

#: Batch width from which the vmapped forward-over-reverse HVP (and, on a
#: one-sample range, the batched double backward) is the default (measured by
#: ``benchmarks/eigensolvers.py`` and ``benchmarks/gm_variance.py``: below it,
#: double backward that reuses one differentiable gradient graph for all
#: vectors is as fast or faster).
VMAP_MIN_VECTORS = 4
VMAP_MIN_CHUNK = 16

_STOCHASTIC_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                       nn.AlphaDropout, nn.FeatureAlphaDropout, nn.modules.batchnorm._BatchNorm)

LossFn = Callable[[Any, Any], Tensor]
LOSS_INPUTS = ("auto", "targets", "batch")


def math_attention() -> contextlib.AbstractContextManager:
    """Context that routes ``F.scaled_dot_product_attention`` through the math
    kernel, the only CPU kernel with a second derivative."""
    return sdpa_kernel(SDPBackend.MATH)


def check_eval_mode(model: nn.Module) -> None:
    """Refuse a model whose output is random or batch-dependent.

    Raises ``ValueError`` if ``model`` is in training mode and holds dropout or
    batch-norm layers: Krylov methods need a deterministic loss. The model is
    not switched to eval mode behind the caller's back.
    """
    if not model.training:
        return
    bad = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _STOCHASTIC_MODULES)})
    if bad:
        raise ValueError(
            f"model is in training mode and contains {', '.join(bad)}: its loss is not "
            "deterministic, so Hessian-vector products would be wrong. Call model.eval() first."
        )


class Problem:
    """Empirical loss of ``model`` over ordered samples, with exact HVPs.

    Parameters
    ----------
    model : nn.Module
        Evaluated as ``model(*inputs)`` for a tensor or a tuple of inputs and
        ``model(**inputs)`` for a dict; only parameters with
        ``requires_grad`` form the flat vector ``w`` (length ``N``).
    loss_fn : callable
        One loss per sample, a Tensor (n,) (reduction ``"none"``; a language
        model's per-sequence mean token cross-entropy, say):
        ``loss_fn(outputs, targets)``, or ``loss_fn(outputs, batch)`` with
        the chunk's :class:`~curvprobe.core.samples.Batch` (``batch.inputs``,
        ``batch.targets``, ``batch.extras``) — see ``loss_input``.
    inputs : Tensor, tuple or dict of Tensors (nested), or Dataset
        Indexed on dim 0 by sample, in the order that defines ``k``; or an
        indexable ``torch.utils.data.Dataset`` of ``(inputs, target)`` items
        (then ``targets`` is None), kept where it is and moved to the device
        one chunk at a time (:mod:`curvprobe.core.samples`).
    targets : Tensor, tuple or dict of Tensors, or None
        Indexed on dim 0 by sample; None for a Dataset or a loss without
        targets (self-supervised; ``loss_fn(outputs, batch)`` then).
    extras : dict of Tensors, optional
        Further per-sample tensors indexed on dim 0 (weights, masks), handed
        to ``loss_fn`` in ``batch.extras``, chunk by chunk.
    loss_input : {"auto", "targets", "batch"}
        What ``loss_fn`` receives besides the outputs. ``"auto"``: the batch
        when there are ``extras`` or no targets, else the targets.
    batch_size : int
        Samples per chunk; bounds peak memory.
    dtype, device :
        Dtype of parameters and floating inputs (default: the model's), and the
        device everything is moved to (default: the model's).
    hvp_mode : {"auto", "double_backward", "forward_over_reverse", "batched_double_backward"}
        HVP path. ``"auto"`` uses the batched double backward for
        :data:`VMAP_MIN_VECTORS` to ``batch_size`` vectors on a one-sample
        range, the vmapped
        forward-over-reverse product for :data:`VMAP_MIN_VECTORS` vectors or
        more when ``batch_size // m`` ≥ :data:`VMAP_MIN_CHUNK`, and double
        backward otherwise (see :func:`hvp_kernel`).
    distributed : bool
        Data parallel over the default ``torch.distributed`` process group:
        each rank evaluates every ``W``-th chunk and every sum, per-sample
        value and product is all-reduced in float64, so every method returns
        the same value on every rank (:mod:`curvprobe.core.distributed`).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any = None, *,
                 extras: Mapping[str, Tensor] | None = None, loss_input: str = "auto",
                 batch_size: int = 256, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, hvp_mode: str = "auto",
                 distributed: bool = False) -> None:
        check_eval_mode(model)
        if hvp_mode not in HVP_MODES:
            raise ValueError(f"unknown hvp_mode {hvp_mode!r}; valid: {', '.join(HVP_MODES)}")
        if loss_input not in LOSS_INPUTS:
            raise ValueError(f"unknown loss_input {loss_input!r}; valid: {', '.join(LOSS_INPUTS)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters")
        first = named[0][1]
        self.dtype = dtype or first.dtype
        self.device = check_device(device if device is not None else first.device)
        self.model = model
        self.loss_fn = loss_fn
        self.batch_size = int(batch_size)
        self.hvp_mode = hvp_mode
        self.param_names = tuple(n for n, _ in named)
        self.param_shapes = tuple(p.shape for _, p in named)
        self._numels = tuple(p.numel() for _, p in named)
        self._w_star = torch.cat([p.detach().reshape(-1) for _, p in named]).to(self.device, self.dtype)
        trainable = set(self.param_names)
        self._constants = {n: self._cast(t.detach()) for n, t in
                           list(model.named_parameters()) + list(model.named_buffers())
                           if n not in trainable}
        self.samples: Samples
        if isinstance(inputs, Dataset) and not isinstance(inputs, Tensor):
            if targets is not None or extras:
                raise ValueError("with a Dataset of (inputs, target) items, pass targets=None and no extras")
            self.samples = DatasetSamples(inputs, self.device, self.dtype)
            has_targets = True
        else:
            if isinstance(inputs, Tensor):
                inputs = (inputs,)  # the model is called as model(*inputs)
            elif isinstance(inputs, list):
                inputs = tuple(inputs)
            self.samples = TensorSamples(inputs, targets, extras, self.device, self.dtype)
            has_targets = targets is not None
        self.loss_input = loss_input if loss_input != "auto" else (
            "batch" if extras or not has_targets else "targets")
        self._n = len(self.samples)
        if self._n < 1:
            raise ValueError("no samples")
        self.shard: Shard = shard(distributed)
        self._check_loss_shape()

    # ------------------------------------------------------------------ basics
    def _cast(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        return t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)

    @property
    def inputs(self) -> Any:
        """The inputs of an in-memory problem: a tuple (the model's positional arguments) or a
        dict (its keyword arguments) of tensors (n, ...); see :meth:`chunk_batch` for any problem."""
        return self._in_memory().inputs

    @property
    def targets(self) -> Any:
        """The targets of an in-memory problem (tensors (n, ...), or None)."""
        return self._in_memory().targets

    @property
    def extras(self) -> Mapping[str, Tensor]:
        """The extra per-sample tensors of an in-memory problem."""
        return self._in_memory().extras

    def _in_memory(self) -> Batch:
        if not isinstance(self.samples, TensorSamples):
            raise AttributeError("a Problem over a Dataset reads its samples chunk by chunk: use "
                                 "chunk_batch(a, b) or sample_arguments(indices)")
        return self.samples.batch

    @property
    def num_samples(self) -> int:
        """Number of ordered samples ``n``."""
        return self._n

    @property
    def num_params(self) -> int:
        """Length ``N`` of the flat parameter vector."""
        return self._w_star.numel()

    @property
    def params(self) -> Tensor:
        """Flat trained point ``w*`` (N,), in the problem's dtype (a copy)."""
        return self._w_star.clone()

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Split a flat vector (N,) into the model's named parameter tensors."""
        return {n: t.view(s) for n, t, s in
                zip(self.param_names, w.split(self._numels), self.param_shapes)}

    def functional_params(self, w: Tensor) -> dict[str, Tensor]:
        """Every parameter and buffer of the model for ``functional_call`` at flat ``w``:
        the trainable ones from ``w``, the rest (frozen parameters, buffers) fixed."""
        return {**self._constants, **self.unflatten(w)}

    def layer_slices(self) -> dict[str, slice]:
        """Where each named parameter lives in the flat vector."""
        out, start = {}, 0
        for n, m in zip(self.param_names, self._numels):
            out[n] = slice(start, start + m)
            start += m
        return out

    def point(self, w: Tensor | None) -> Tensor:
        """``w`` (N,) checked and cast to the problem's dtype and device; ``w*`` if None."""
        if w is None:
            return self._w_star
        w = torch.as_tensor(w)
        if w.shape != (self.num_params,):
            raise ValueError(f"w must have shape ({self.num_params},), got {tuple(w.shape)}")
        return w.to(self.device, self.dtype)

    def sample_range(self, k: int | None, start: int = 0) -> tuple[int, int]:
        """Validated ``(start, stop)`` for samples ``[start, k)`` (``k`` None: all)."""
        stop = self._n if k is None else int(k)
        if not 0 <= start < self._n:
            raise ValueError(f"start must be in [0, {self._n - 1}], got {start}")
        if not start < stop <= self._n:
            raise ValueError(f"k must be in [{start + 1}, {self._n}] (num_samples={self._n}), got {k}")
        return start, stop

    def chunks(self, start: int, stop: int, size: int | None = None) -> Iterator[tuple[int, int]]:
        """Consecutive ``[a, b)`` sample ranges of at most ``size`` (default ``batch_size``)."""
        size = self.batch_size if size is None else max(1, int(size))
        for a in range(start, stop, size):
            yield a, min(a + size, stop)

    def local_chunks(self, start: int, stop: int, size: int | None = None) -> Iterator[tuple[int, int]]:
        """The :meth:`chunks` this rank evaluates (all of them in one process)."""
        for i, chunk in enumerate(self.chunks(start, stop, size)):
            if self.shard.owns(i):
                yield chunk

    def all_reduce(self, x: Tensor) -> Tensor:
        """``x`` summed over the ranks, in place (identity in one process)."""
        return all_reduce_sum(x, self.shard)

    def chunk_batch(self, a: int, b: int) -> Batch:
        """Samples ``a..b−1`` on the device."""
        return self.samples.chunk(a, b)

    def loss_on(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Per-sample losses (n,) of ``batch`` with the model's parameters and buffers ``params``.

        The one place the model and the loss are called: a pure function of
        ``params`` (safe under ``torch.func`` transforms); ``ValueError`` with a
        hint that fits the shape seen if the loss is not one value per sample.
        """
        with math_attention():
            if isinstance(batch.inputs, Mapping):
                out = functional_call(self.model, dict(params), (), dict(batch.inputs))
            else:
                out = functional_call(self.model, dict(params), tuple(batch.inputs))
        losses = self.loss_fn(out, batch if self.loss_input == "batch" else batch.targets)
        n = leaves(batch)[0].shape[0]
        if not isinstance(losses, Tensor) or losses.shape != (n,):
            raise ValueError(loss_shape_hint(losses, n))
        return losses

    def _check_loss_shape(self) -> None:
        """One forward on the first two samples: the loss must be one floating value per sample."""
        with torch.no_grad():
            first = self.samples.chunk(0, min(2, self._n))
            losses = self.loss_on(self.functional_params(self._w_star), first)
        if not losses.is_floating_point():
            raise TypeError(f"loss_fn must return floating-point losses, got dtype {losses.dtype}")

    def chunk_losses(self, w: Tensor, a: int, b: int) -> Tensor:
        """Per-sample losses ``ℓ_a..ℓ_{b-1}`` at flat ``w``: (b − a,), problem dtype.

        A pure function of ``w``: safe under ``torch.func`` transforms.
        """
        return self.loss_on(self.functional_params(w), self.samples.chunk(a, b))

    # ----------------------------------------------------------- evaluations
    def per_sample_losses(self, w: Tensor | None = None, *, start: int = 0,
                          stop: int | None = None) -> Tensor:
        """Losses ``ℓ_i(w)`` for ``start ≤ i < stop``: float64 tensor (stop − start,)."""
        start, stop = self.sample_range(stop, start)
        w = self.point(w)
        out = torch.zeros(stop - start, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for a, b in self.local_chunks(start, stop):
                out[a - start:b - start] = self.chunk_losses(w, a, b).double()
        self.all_reduce(out)  # every sample's loss in place on every rank (the rest are zeros)
        _check_finite(out, "per-sample losses")
        return out

    def loss(self, w: Tensor | None = None, k: int | None = None, *, start: int = 0) -> Tensor:
        """Mean loss ``L`` over samples ``[start, k)`` (default all): float64 scalar."""
        start, stop = self.sample_range(k, start)
        return self.per_sample_losses(w, start=start, stop=stop).sum() / (stop - start)

    def gradient(self, w: Tensor | None = None, k: int | None = None, *, start: int = 0) -> Tensor:
        """Gradient of the mean loss over ``[start, k)`` at ``w``: float64 (N,)."""
        start, stop = self.sample_range(k, start)
        w = self.point(w)
        total = torch.zeros(self.num_params, dtype=torch.float64, device=self.device)
        for a, b in self.local_chunks(start, stop):
            wr = w.detach().requires_grad_(True)
            losses = self.chunk_losses(wr, a, b)
            _check_finite(losses.detach(), "per-sample losses")
            (g,) = torch.autograd.grad(losses.sum(), wr)
            total += g.double()
        return self.all_reduce(total) / (stop - start)

    def per_sample_losses_at(self, W: Tensor, *, start: int = 0, stop: int | None = None,
                             point_batch: int = 8) -> Tensor:
        """Losses at many points: ``out[s, i] = ℓ_{start+i}(W[s])``, float64 (S, stop − start).

        ``W`` (S, N) holds flat points; they are evaluated ``point_batch`` at a
        time with ``vmap`` over points (one batched forward per sample chunk).
        A chunk then holds ``batch_size // point_batch`` samples, so one
        forward sees ``batch_size`` sequences as elsewhere: memory is bounded
        by ``point_batch`` N-vectors and one chunk (and small chunks are the
        faster ones per sample on CPU).
        """
        start, stop = self.sample_range(stop, start)
        if W.dim() != 2 or W.shape[1] != self.num_params:
            raise ValueError(f"W must have shape (S, {self.num_params}), got {tuple(W.shape)}")
        W = W.to(self.device, self.dtype)
        out = torch.zeros(W.shape[0], stop - start, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for p0 in range(0, W.shape[0], point_batch):
                Wp = W[p0:p0 + point_batch]
                for a, b in self.local_chunks(start, stop, self.batch_size // len(Wp)):
                    losses = vmap(lambda w, a=a, b=b: self.chunk_losses(w, a, b))(Wp)
                    out[p0:p0 + len(Wp), a - start:b - start] = losses.double()
        self.all_reduce(out)
        _check_finite(out, "per-sample losses")
        return out

    def sample_loss(self, w: Tensor, sample: Batch) -> Tensor:
        """Loss of one sample at flat ``w``: a scalar in the problem's dtype.

        ``sample`` is one sample's :class:`~curvprobe.core.samples.Batch`
        (tensors without the sample dimension), as ``vmap`` over
        :meth:`sample_arguments` hands it. A pure function of ``w``:
        per-sample ``torch.func`` derivatives
        (:func:`curvprobe.criteria.engine.subspace_derivatives`) are built on it.
        """
        one = tree_map(lambda x: x.unsqueeze(0), sample)
        return self.loss_on(self.functional_params(w), one).reshape(())

    def sample_arguments(self, indices: Tensor) -> Batch:
        """The samples at the 0-based ``indices`` (n,) on the device, as one Batch."""
        return self.samples.select(indices)

    def hvp(self, v: Tensor, k: int | None = None, w: Tensor | None = None, *,
            start: int = 0, mode: str | None = None, out: Tensor | None = None) -> Tensor:
        """Exact Hessian-vector product ``H v`` of the mean loss over ``[start, k)``.

        Parameters
        ----------
        v : Tensor (N,) or (N, m)
            One vector or ``m`` vectors as columns; any floating dtype, on the
            problem's device. Computed in the problem's dtype.
        mode : optional override of the problem's ``hvp_mode``.
        out : Tensor (N, m) float64, optional
            Buffer the product is written into (``v`` two-dimensional): a
            caller that reuses one for many products spares the allocator
            the fresh pages of a new ``N × m`` float64 tensor each time.

        Returns
        -------
        Tensor, float64, same shape as ``v`` (``out`` if given).
        """
        start, stop = self.sample_range(k, start)
        w = self.point(w)
        V = self._check_vectors(v)
        chunk_hvp, size = hvp_kernel(mode or self.hvp_mode, V.shape[1], self.batch_size, stop - start)
        if out is not None and (v.dim() != 2 or out.shape != V.shape or out.dtype != torch.float64
                                or out.device != V.device):
            raise ValueError(f"out must be a float64 ({V.shape[0]}, {V.shape[1]}) buffer on {V.device} for a "
                             f"2-d v, got {out.dtype} {tuple(out.shape)} on {out.device} for v of shape "
                             f"{tuple(v.shape)}")
        total = torch.zeros(V.shape, dtype=torch.float64, device=self.device) if out is None else out.zero_()
        for a, b in self.local_chunks(start, stop, size):

            def chunk_loss(x: Tensor, a: int = a, b: int = b) -> Tensor:
                return self.chunk_losses(x, a, b).sum()

            chunk_hvp(chunk_loss, w, V, total)
        result = self.all_reduce(total).div_(stop - start)
        return result[:, 0] if v.dim() == 1 else result

    def _check_vectors(self, v: Tensor) -> Tensor:
        if not isinstance(v, Tensor):
            raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"v must be floating point, got dtype {v.dtype}")
        if v.device != self.device and not (v.device.type == self.device.type == "cpu"):
            raise ValueError(f"v is on {v.device}, the problem on {self.device}")
        if v.dim() not in (1, 2) or v.shape[0] != self.num_params:
            raise ValueError(f"v must have shape (N,) or (N, m) with N={self.num_params}, "
                             f"got {tuple(v.shape)}")
        return v.reshape(self.num_params, -1)

    def hessian_operator(self, k: int | None = None, w: Tensor | None = None, *, start: int = 0,
                         params: ParameterSpec | None = None) -> HessianOperator | BlockHessianOperator:
        """The Hessian of the mean loss over ``[start, k)`` at ``w`` as an operator.

        With ``params`` (a name or glob, several, a module, or a predicate on
        names: :func:`~curvprobe.core.operators.parameter_block`), the block
        ``H_BB`` of those parameters, the others held at ``w``: a
        :class:`~curvprobe.core.operators.BlockHessianOperator` of their size
        whose products differentiate with respect to the block alone.
        """
        if params is None:
            return HessianOperator(self, k=k, w=w, start=start)
        block = parameter_block(self.model, self.layer_slices(), params)
        return BlockHessianOperator(self, block, hvp_kernel, k, w, start=start)

    def ggn_operator(self, k: int | None = None, w: Tensor | None = None, *, start: int = 0,
                     params: ParameterSpec | None = None) -> GGNOperator:
        """The generalized Gauss–Newton matrix ``(1/n) Σ J_iᵀ ∇²_f ℓ_i J_i`` over
        ``[start, k)`` at ``w`` as an operator (on the block ``params`` if given).

        The loss is taken as the composition of the model's outputs ``f`` and
        ``loss_fn`` of those outputs; ``G`` is positive semi-definite when
        ``loss_fn`` is convex in the outputs (cross-entropy, squared error):
        :class:`~curvprobe.core.operators.GGNOperator`.
        """

        def outputs(parameters: dict[str, Tensor], batch: Batch) -> Any:
            with math_attention():
                if isinstance(batch.inputs, Mapping):
                    return functional_call(self.model, parameters, (), dict(batch.inputs))
                return functional_call(self.model, parameters, tuple(batch.inputs))

        def loss(out: Any, batch: Batch) -> Tensor:
            return self.loss_fn(out, batch if self.loss_input == "batch" else batch.targets)

        block = None if params is None else parameter_block(self.model, self.layer_slices(), params)
        return GGNOperator(self, outputs, loss, k, w, start=start, block=block)

    def __repr__(self) -> str:
        ranks = f", ranks={self.shard.size}" if self.shard.size > 1 else ""
        return (f"Problem({type(self.model).__name__}, N={self.num_params}, n={self._n}, "
                f"dtype={self.dtype}, device={self.device}, batch_size={self.batch_size}{ranks})")


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` in one line if this torch cannot use it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} is not available: this torch build ({torch.__version__}) "
                         "sees no CUDA GPU; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} is not available: {torch.cuda.device_count()} CUDA "
                         "device(s) visible")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(device)!r} is not available on this machine; use device='cpu'")
    return dev


def loss_shape_hint(losses: object, n: int) -> str:
    """What to change in a ``loss_fn`` that did not return one loss per sample (shape (n,))."""
    if not isinstance(losses, Tensor):
        return (f"loss_fn must return a Tensor of one loss per sample, shape ({n},); "
                f"got {type(losses).__name__}")
    shape = tuple(losses.shape)
    head = f"loss_fn must return one loss per sample, shape ({n},); got {shape}"
    if shape == ():
        return f"{head}: it reduced over the samples — use reduction='none'"
    if shape[0] == n and all(d == 1 for d in shape[1:]):
        return f"{head}: squeeze the trailing dimension(s), e.g. loss.reshape({n})"
    if shape[0] == n:
        dims = tuple(range(1, len(shape)))
        return f"{head}: average over the non-sample dimensions, e.g. loss.mean(dim={dims})"
    return f"{head}: it must keep the samples on dim 0 (reduction='none')"


def _check_finite(x: Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"non-finite {what}: the model or data produce NaN/inf at this point")


def hvp_kernel(mode: str, num_vectors: int, batch_size: int, num_samples: int) -> tuple[HVPKernel, int]:
    """The HVP kernel ``(f, w, V, out)``, which adds ``∇²f(w) V`` into the
    float64 accumulator ``out`` (N, m) in place, for ``mode`` (one of
    :data:`HVP_MODES`) and a batch of ``num_vectors`` columns over a range of
    ``num_samples`` samples, and the samples per chunk to run it on.

    ``"auto"`` picks, on a one-sample range, the batched double backward
    for :data:`VMAP_MIN_VECTORS` to ``batch_size`` columns (on one tiny-gpt
    sequence 6.9, 5.9, 3.9 and 3.4 ms a column at 4, 8, 17 and 51 columns,
    against 15.3, 10.6, 11.3 and 11.9 for the rule below, which looks at
    samples per chunk; at 2 columns the kernels were even,
    ``benchmarks/gm_variance.py``); otherwise forward-over-reverse from
    :data:`VMAP_MIN_VECTORS` columns on, when its chunks would still hold
    :data:`VMAP_MIN_CHUNK` samples (smaller ones were measured slower per
    vector than double backward). Double backward reuses one graph for
    the columns in turn (chunks of ``batch_size``); the vmapped paths hold
    ``num_vectors`` copies of the activations, so their chunks hold
    ``batch_size // num_vectors`` samples — the same memory, and measured
    2.5× faster per vector on tiny-gpt (16 vectors, 512 samples) than whole
    ``batch_size`` chunks."""
    if mode not in HVP_MODES:
        raise ValueError(f"unknown hvp mode {mode!r}; valid: {', '.join(HVP_MODES)}")
    if mode == "auto" and num_samples == 1 and VMAP_MIN_VECTORS <= num_vectors <= batch_size:
        mode = "batched_double_backward"
    elif mode == "auto":
        vmapped = num_vectors >= VMAP_MIN_VECTORS and batch_size // num_vectors >= VMAP_MIN_CHUNK
        mode = "forward_over_reverse" if vmapped else "double_backward"
    if mode == "double_backward":
        return _hvp_double_backward, batch_size
    kernel = _hvp_batched_double_backward if mode == "batched_double_backward" else _hvp_forward_over_reverse
    return kernel, max(1, batch_size // max(1, num_vectors))


def _hvp_double_backward(f: Callable[[Tensor], Tensor], w: Tensor, V: Tensor, out: Tensor) -> None:
    """``out += ∇²f(w) V`` by reverse-over-reverse, one gradient graph reused
    for the columns of ``V`` (N, m) in turn, each converted to ``w``'s dtype
    on its own and added into the float64 ``out`` (N, m) as it comes: no
    (N, m) copy of ``V`` or of the product is made."""
    wr = w.detach().requires_grad_(True)
    value = f(wr)
    _check_finite(value.detach(), "loss")
    (g,) = torch.autograd.grad(value, wr, create_graph=True)
    m = V.shape[1]
    for j in range(m):
        out[:, j] += torch.autograd.grad(g, wr, V[:, j].to(w.dtype), retain_graph=j < m - 1)[0]


def _hvp_batched_double_backward(f: Callable[[Tensor], Tensor], w: Tensor, V: Tensor, out: Tensor) -> None:
    """``out += ∇²f(w) V`` by reverse-over-reverse with the second backward
    batched over the columns of ``V`` (N, m) (``is_grads_batched``: one
    vmapped pass through the gradient graph, ``m`` copies of its
    intermediates). On one tiny-gpt sample it is the fastest kernel at 9 and
    17 columns (17: 2.4 ms a column against 3.5 for forward-over-reverse and
    5.1 for double backward); the two vmapped kernels are even at 51 columns
    and forward-over-reverse is ahead at 64 (``benchmarks/gm_variance.py``).
    On many-sample chunks it was not faster."""
    wr = w.detach().requires_grad_(True)
    value = f(wr)
    _check_finite(value.detach(), "loss")
    (g,) = torch.autograd.grad(value, wr, create_graph=True)
    accumulate_(out, torch.autograd.grad(g, wr, V.T.to(w.dtype), is_grads_batched=True)[0].T)


def _hvp_forward_over_reverse(f: Callable[[Tensor], Tensor], w: Tensor, V: Tensor, out: Tensor) -> None:
    """``out += ∇²f(w) V`` by ``jvp`` of ``grad``, vmapped over the columns of
    ``V`` (N, m) (converted to ``w``'s dtype: the batch is one tensor)."""
    grad_f = grad(f)

    def single(v: Tensor) -> Tensor:
        return jvp(grad_f, (w,), (v,))[1]

    if V.shape[1] == 1:
        out[:, 0] += single(V[:, 0].to(w.dtype))
    else:
        accumulate_(out, vmap(single)(V.T.to(w.dtype)).T)


def accumulate_(out: Tensor, x: Tensor) -> None:
    """``out += x`` for a float64 ``out`` and an ``x`` (N, m) of the problem's
    dtype, over blocks of rows: the float64 copy of ``x`` the addition makes
    stays under 16 MB (a whole N × m one is fresh pages every call)."""
    rows = max(1, (1 << 21) // max(1, x.shape[1]))
    for a in range(0, x.shape[0], rows):
        out[a:a + rows] += x[a:a + rows]
