"""Per-layer gradient spectra and exact directional curvature (Calvo; ``docs/spectral.md``).

For a layer weight ``W`` seen as a matrix ``W ∈ R^{m×n}`` (``m`` = output
features; conv kernels reshaped to ``m × (c_in·kh·kw)``) and the first ``k``
samples of a :class:`~curvprobe.core.problem.Problem`:

    G = ∇_W L_k(w*) = U Σ Vᵀ,          L_k = (1/k) Σ_{i≤k} ℓ_i,
    E_j = u_j v_jᵀ  (‖E_j‖_F = 1),     j = 1..K,
    h_j = vec(E_j)ᵀ H_WW vec(E_j),     H_WW = the (W, W) block of ∇²L_k(w*).

``h_j`` is exact (no finite differences): all ``K`` directions go to **one**
batched HVP call. Two equivalent paths (:func:`directional_curvature`):
``method="block"`` (default) differentiates the loss with respect to the
layer's weight alone — every other parameter held at w* — which gives exactly
the (W, W) block of the full Hessian while skipping the work outside it;
``method="full"`` embeds each ``E_j`` in an ``N``-vector that is zero outside
the layer's slice of the flat parameter vector and calls :meth:`Problem.hvp`
with ``V`` of shape ``(N, K)``. Either way the loss is the whole model's, so
``h_j`` includes every path through the network. Cost per layer: ``K`` HVPs
(vectors) in one call, plus one gradient pass shared by all layers.
``benchmarks/spectral.py`` measures both paths and the batching.

Which parameters are layers
    Default (``layers=None``): the ``weight`` of every ``nn.Linear``,
    ``nn.Conv1d``, ``nn.Conv2d`` and Hugging Face ``Conv1D`` (duck-typed: a
    class named ``Conv1D`` with an ``nf`` attribute, weight stored
    ``(in, out)``). **Embedding matrices are excluded by default**; name them
    (exactly or by a glob) to include them. Biases and other 1-D parameters are
    never layers. Names are the problem's parameter names
    (``Problem.param_names``, e.g. ``"blocks.0.attn.c_q.weight"``); patterns
    containing ``*``, ``?`` or ``[`` are shell globs (:func:`fnmatch.fnmatchcase`)
    matched against every matrix-shaped parameter (2-D weights, 3-D ``Conv1d``
    and 4-D conv kernels — embeddings included, biases never). A tied weight
    is one parameter, listed once under the name ``named_parameters()`` gives
    it and with the kind of the module that owns that name.

Orientation
    Every layer is analysed as the ``out × in`` matrix it applies: a Linear or
    conv weight as stored (conv reshaped ``m × rest``, matching
    :func:`torch.nn.functional.unfold`'s ``(c_in, kh, kw)`` ordering), the
    transpose of a Hugging Face ``Conv1D`` weight (stored ``in × out``) and of an
    embedding table (``vocab × dim`` stored; as a map from one-hot tokens it is
    ``dim × vocab``). Singular values and ``h`` do not depend on the orientation;
    the Kronecker analysis (:mod:`curvprobe.spectral.kronecker`) needs ``u`` in
    output space and ``v`` in input space.

Fits (per layer, :mod:`curvprobe.spectral.fits`)
    α, γ, s (with R²), s ≈ αγ (the alpha triangle), rank-profile AIC/BIC and
    the BIC winner, participation ratios of ``h⁺ = max(h, 0)`` and of ``σ²``,
    the zeta bound ``ζ(s)²/ζ(2s)`` on PR_h, and ``s_weight`` from the top-K
    singular values of ``W`` itself. Fits use the ranks ``j ≤ r`` with
    ``σ_j > tol = σ_1 · max(m, n) · eps(dtype)`` (the numerical rank of G; a
    gradient over few samples can have rank < K). A fit without enough points
    gives NaN and a reason string, never an exception, so a sweep over layers
    always completes.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from curvprobe.core.problem import Problem, hvp_kernel
from curvprobe.core.samples import Batch
from curvprobe.results import provenance
from curvprobe.spectral.fits import (
    RANK_MODELS,
    alpha_gamma_s,
    participation_ratio,
    rank_profile,
    s_weight,
    zeta_bound,
)

__all__ = [
    "CURVATURE_METHODS",
    "DEFAULT_KINDS",
    "Layer",
    "block_hvp",
    "directional_curvature",
    "gradient_svd",
    "layer_group",
    "layer_spectra",
    "select_layers",
]

DEFAULT_KINDS = ("linear", "conv1d", "conv2d", "hf_conv1d")
"""Layer kinds selected when ``layers=None`` (embeddings are not among them)."""

_GLOB_CHARS = ("*", "?", "[")
_NAN = float("nan")

_ATTENTION_TOKENS = ("attn", "attention", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj",
                     "out_proj", "c_q", "c_k", "c_v", "c_attn", "query", "key", "value", "qkv")
_MLP_TOKENS = ("mlp", "ffn", "feed_forward", "feedforward", "fc", "c_fc", "fc1", "fc2",
               "intermediate", "up_proj", "down_proj", "gate_proj", "w1", "w2", "w3")
_HEAD_TOKENS = ("head", "lm_head", "classifier", "score")


# --------------------------------------------------------------------------- #
# layers
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Layer:
    """One weight analysed as an ``m × n`` (out × in) matrix.

    Attributes
    ----------
    name : str
        Parameter name in ``Problem.param_names``.
    module_name : str
        Dotted path of the module owning it ("" for the root).
    module : nn.Module
        That module (used only to register temporary hooks).
    kind : str
        "linear", "conv1d", "conv2d", "hf_conv1d", "embedding", "matrix"
        (another 2-D parameter) or "kernel" (another 4-D one).
    group : str
        Name-based role (:func:`layer_group`): "attention", "mlp", "head",
        "conv", "embedding", or the kind.
    param_shape : tuple of int
        Shape as stored.
    matrix_shape : tuple of int
        ``(m, n)`` of the out × in matrix.
    transposed : bool
        The stored 2-D weight is the transpose of that matrix (Hugging Face
        ``Conv1D``, embeddings).
    flat : slice
        Where the parameter lives in the problem's flat vector.
    shared : bool
        The parameter is used by more than one module (tied weights).
    """

    name: str
    module_name: str
    module: nn.Module = field(repr=False, compare=False)
    kind: str
    group: str
    param_shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    transposed: bool
    flat: slice
    shared: bool = False

    @property
    def max_rank(self) -> int:
        """``min(m, n)``: the largest possible rank of the layer's gradient."""
        return min(self.matrix_shape)

    def matrix(self, flat_vector: Tensor) -> Tensor:
        """The layer's ``m × n`` matrix view of a flat ``(N,)`` vector (a view or a transpose)."""
        block = flat_vector[self.flat].view(self.param_shape)
        if self.transposed:
            return block.T
        return block.reshape(self.matrix_shape)

    def to_flat(self, matrices: Tensor) -> Tensor:
        """Stack of ``(K, m, n)`` matrices → ``(numel, K)`` columns in parameter layout."""
        if self.transposed:
            matrices = matrices.transpose(1, 2)
        return matrices.reshape(matrices.shape[0], -1).T


def layer_group(name: str, kind: str) -> str:
    """Heuristic role of a layer from its parameter name and kind.

    "embedding" and "conv" by kind; otherwise by dotted name parts:
    "attention" (attn, attention, q/k/v/o_proj, c_q, c_k, c_v, c_attn, query,
    key, value, qkv), then "mlp" (mlp, ffn, fc, c_fc, up/down/gate_proj, …),
    then "head" (head, lm_head, classifier, score); else the kind itself.
    Used for tables and plots only; nothing depends on it.
    """
    if kind == "embedding":
        return "embedding"
    if kind in ("conv1d", "conv2d", "kernel"):
        return "conv"
    parts = name.lower().split(".")[:-1] or [name.lower()]
    if any(p in _ATTENTION_TOKENS or "attn" in p or "attention" in p for p in parts):
        return "attention"
    if any(p in _MLP_TOKENS or "mlp" in p for p in parts):
        return "mlp"
    if any(p in _HEAD_TOKENS for p in parts):
        return "head"
    return kind


def _is_hf_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _kind(module: nn.Module, attr: str, param: Tensor) -> str | None:
    """Kind of ``module.<attr>`` as a layer, or None if it is not matrix-shaped."""
    if attr == "weight":
        if isinstance(module, nn.Linear) and param.dim() == 2:
            return "linear"
        if isinstance(module, nn.Conv2d) and param.dim() == 4:
            return "conv2d"
        if isinstance(module, nn.Conv1d) and param.dim() == 3:
            return "conv1d"
        if isinstance(module, nn.Embedding) and param.dim() == 2:
            return "embedding"
        if _is_hf_conv1d(module) and param.dim() == 2:
            return "hf_conv1d"
    if param.dim() == 2:
        return "matrix"
    if param.dim() == 4:
        return "kernel"
    return None


def _candidates(problem: Problem) -> tuple[dict[str, Layer], dict[str, tuple[int, ...]]]:
    """(layers by name for every matrix-shaped trainable parameter, shapes of all others)."""
    model = problem.model
    owners: dict[int, int] = {}
    for _, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    params = dict(model.named_parameters())
    slices = problem.layer_slices()
    layers: dict[str, Layer] = {}
    others: dict[str, tuple[int, ...]] = {}
    for name, shape in zip(problem.param_names, problem.param_shapes):
        module_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
        module = model.get_submodule(module_name)
        kind = _kind(module, attr, params[name])
        if kind is None:
            others[name] = tuple(shape)
            continue
        dims = tuple(shape)
        transposed = kind in ("hf_conv1d", "embedding")
        matrix_shape = (dims[1], dims[0]) if transposed else (dims[0], math.prod(dims[1:]))
        layers[name] = Layer(
            name=name, module_name=module_name, module=module, kind=kind,
            group=layer_group(name, kind), param_shape=dims, matrix_shape=matrix_shape,
            transposed=transposed, flat=slices[name], shared=owners.get(id(params[name]), 1) > 1,
        )
    return layers, others


def select_layers(problem: Problem, layers: str | Iterable[str] | None = None) -> list[Layer]:
    """The layers of ``problem`` that ``layers`` names, in model order.

    Parameters
    ----------
    problem : Problem
        The problem whose model and flat parameter vector are used.
    layers : str, iterable of str, or None
        None for every Linear / Conv1d / Conv2d / HF Conv1D weight
        (embeddings excluded); else a name or glob, or a list of them. Exact
        names may be any matrix-shaped parameter (embeddings included); globs
        match among those.

    Returns
    -------
    list of Layer
        Without duplicates, ordered as in the model.

    Raises
    ------
    ValueError
        An unknown name or a glob matching nothing (the message lists the
        available layers), a parameter that is not a 2-D weight or a 3-D/4-D
        conv kernel (e.g. a bias), or nothing to select.
    TypeError
        ``layers`` is neither None, a string nor an iterable of strings.
    """
    candidates, others = _candidates(problem)
    available = ", ".join(candidates) or "(none)"
    if layers is None:
        chosen = [layer for layer in candidates.values() if layer.kind in DEFAULT_KINDS]
        if not chosen:
            raise ValueError(
                "the model has no Linear/Conv1d/Conv2d/Conv1D weights to analyse by default; "
                f"name layers explicitly (available: {available})"
            )
        return chosen
    if not isinstance(layers, (str, Iterable)):
        raise TypeError("layers must be None, a name or glob, or a list of them; "
                        f"got {type(layers).__name__}")
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise ValueError(f"layers is empty; available layers: {available}")
    picked: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"layers must be names or glob patterns (str), got {type(pattern).__name__}")
        if any(c in pattern for c in _GLOB_CHARS):
            matched = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise ValueError(f"layer pattern {pattern!r} matches no layer; available layers: {available}")
            picked.update(matched)
        elif pattern in candidates:
            picked.add(pattern)
        elif pattern in others:
            raise ValueError(
                f"parameter {pattern!r} has shape {others[pattern]}: a layer needs a 2-D weight "
                f"(or a 3-D Conv1d / 4-D conv kernel); available layers: {available}"
            )
        else:
            frozen = {n for n, p in problem.model.named_parameters() if not p.requires_grad}
            hint = " (it is frozen: requires_grad=False parameters are not part of the problem)" \
                if pattern in frozen else ""
            raise ValueError(f"unknown layer {pattern!r}{hint}; available layers: {available}")
    return [layer for name, layer in candidates.items() if name in picked]


def check_top_k(top_k: int, layers: Sequence[Layer]) -> int:
    """``top_k`` as an int, checked against the rank ``min(m, n)`` of every layer.

    Raises
    ------
    ValueError
        ``top_k`` is not a positive integer or exceeds a layer's rank (the
        message names those layers).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    too_small = [f"{layer.name} (rank <= {layer.max_rank}, matrix {layer.matrix_shape[0]}x"
                 f"{layer.matrix_shape[1]})" for layer in layers if layer.max_rank < top_k]
    if too_small:
        raise ValueError(
            f"top_k={top_k} exceeds the rank of layer(s) {', '.join(too_small)}; "
            "lower top_k or select other layers"
        )
    return int(top_k)


def resolve_k(problem: Problem, k: int | None) -> int:
    """The sample count ``k`` checked against ``problem`` (None: all samples).

    Raises
    ------
    ValueError
        ``k`` is not an integer in ``[1, problem.num_samples]``.
    """
    if k is None:
        return problem.num_samples
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer in [1, {problem.num_samples}], got {k!r}")
    return problem.sample_range(int(k))[1]


# --------------------------------------------------------------------------- #
# gradient SVD and directional curvature
# --------------------------------------------------------------------------- #


def gradient_svd(layer: Layer, gradient: Tensor, top_k: int, *,
                 precision: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor, int]:
    """Top-K singular triplets of the layer's gradient matrix (``torch.linalg.svd``, float64).

    Parameters
    ----------
    layer : Layer
        From :func:`select_layers`.
    gradient : Tensor, shape (N,)
        Flat gradient, e.g. ``problem.gradient(k=k)``.
    top_k : int
        K ≤ ``layer.max_rank``.
    precision : torch.dtype, optional
        Dtype the gradient was computed in (default its own dtype); sets the
        rank tolerance.

    Returns
    -------
    singular_values : Tensor, shape (K,)
        σ_1 ≥ … ≥ σ_K, float64.
    U : Tensor, shape (m, K)
        Left singular vectors, float64.
    Vh : Tensor, shape (K, n)
        Right singular vectors as rows, float64.
    rank : int
        The numerical rank of G: the number of σ_j > σ_1 · max(m, n) ·
        eps(precision) (0 for G = 0).
    """
    G = layer.matrix(gradient).to(torch.float64)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    rank = _numerical_rank(S, layer.matrix_shape, precision or gradient.dtype)
    return S[:top_k], U[:, :top_k], Vh[:top_k], rank


def _numerical_rank(S: Tensor, shape: tuple[int, int], dtype: torch.dtype) -> int:
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    tol = float(S[0]) * max(shape) * torch.finfo(dtype).eps
    return int((tol < S).sum())


CURVATURE_METHODS = ("block", "full")
"""How :func:`directional_curvature` forms ``H E_j``: see its docstring."""


def _block_path_available(problem: Problem) -> bool:
    """The block HVP re-creates :meth:`Problem.chunk_losses`; a subclass (or an
    instance) that overrides it gets the full path instead."""
    return type(problem).chunk_losses is Problem.chunk_losses and "chunk_losses" not in vars(problem)


def curvature_path(problem: Problem, method: str) -> str:
    """The path :func:`directional_curvature` takes for ``method``: ``"block"``
    falls back to ``"full"`` where :func:`_block_path_available` says no."""
    return "full" if method == "block" and not _block_path_available(problem) else method


def block_hvp(problem: Problem, layer: Layer, V: Tensor, k: int | None = None, *,
              mode: str | None = None) -> Tensor:
    """``H_WW V``: Hessian of ``L_k`` with respect to one layer's weight, all other
    parameters held at w*, times ``V``.

    ``H_WW`` is exactly the (W, W) block of the full Hessian ``∇²L_k(w*)``; only
    the products with that block are formed, so the reverse pass stops at the
    layer, no other weight gradient is computed, and forward tangents start at
    the layer. Chunks, float64 accumulation, the SDPA math kernel and the HVP
    kernels (double backward / vmapped forward-over-reverse, chosen like
    :meth:`Problem.hvp`) are those of :class:`Problem`; the per-chunk loss is
    :meth:`Problem.chunk_losses` with the layer's tensor substituted.

    Parameters
    ----------
    problem : Problem
        The problem.
    layer : Layer
        The layer whose weight is differentiated.
    V : Tensor, shape (numel, m)
        Columns in the parameter's stored layout (flattened).
    k : int, optional
        Samples ``[0, k)`` (default all).
    mode : {"auto", "double_backward", "forward_over_reverse"}, optional
        HVP kernel (default the problem's ``hvp_mode``).

    Returns
    -------
    Tensor, shape (numel, m)
        ``H_WW V`` in float64.

    Raises
    ------
    ValueError
        The problem overrides ``chunk_losses`` (use ``method="full"``).
    """
    if not _block_path_available(problem):
        raise ValueError(f"{type(problem).__name__} overrides chunk_losses; use method='full'")
    stop = resolve_k(problem, k)
    chunk_hvp, size = hvp_kernel(mode or problem.hvp_mode, V.shape[1], problem.batch_size, stop)
    w = problem.params
    base = problem.functional_params(w)
    x0 = w[layer.flat]
    V = V.to(problem.device)
    total = torch.zeros(V.shape, dtype=torch.float64, device=problem.device)
    for a, b in problem.local_chunks(0, stop, size):
        batch = problem.chunk_batch(a, b)

        def chunk_loss(x: Tensor, batch: Batch = batch) -> Tensor:
            return problem.loss_on({**base, layer.name: x.view(layer.param_shape)}, batch).sum()

        chunk_hvp(chunk_loss, x0, V, total)
    return problem.all_reduce(total) / stop


def directional_curvature(problem: Problem, layer: Layer, U: Tensor, Vh: Tensor,
                          k: int | None = None, *, method: str = "block",
                          directions_per_call: int | None = None,
                          hvp_mode: str | None = None) -> tuple[Tensor, int]:
    """Exact curvature ``h_j = vec(u_j v_jᵀ)ᵀ H vec(u_j v_jᵀ)`` along rank-one directions.

    ``H = ∇²L_k(w*)``; the directions live in the layer, so only the block
    ``H_WW`` enters. Two exact ways to form ``H E_j``:

    - ``method="block"`` (default): :func:`block_hvp`, the Hessian with respect
      to the layer's weight alone. Same numbers as "full" (to rounding); much
      cheaper, because nothing outside the block is differentiated. A problem
      whose ``chunk_losses`` is overridden (an adapter subclass) falls back to
      "full".
    - ``method="full"``: each ``E_j`` embedded in an ``N``-vector that is zero
      outside the layer's slice and passed to :meth:`Problem.hvp` (the HVP of
      the whole model); ``h_j`` is read inside the slice.

    Parameters
    ----------
    problem : Problem
        The problem.
    layer : Layer
        The layer the directions live in.
    U : Tensor, shape (m, K)
        Left vectors u_j.
    Vh : Tensor, shape (K, n)
        Right vectors v_jᵀ.
    k : int, optional
        First k samples (default all).
    method : {"block", "full"}
        How ``H E_j`` is formed.
    directions_per_call : int, optional
        Columns per HVP call; None puts all K directions in one batched
        call, 1 does one HVP per direction.
    hvp_mode : str, optional
        Override of the problem's HVP mode.

    Returns
    -------
    h : Tensor, shape (K,)
        Curvatures, float64.
    calls : int
        Number of HVP calls (the HVP count in vectors is K).

    Raises
    ------
    ValueError
        Unknown ``method`` or ``directions_per_call`` < 1.
    """
    if method not in CURVATURE_METHODS:
        raise ValueError(f"method must be one of {CURVATURE_METHODS}, got {method!r}")
    method = curvature_path(problem, method)
    K = U.shape[1]
    per_call = K if directions_per_call is None else int(directions_per_call)
    if per_call < 1:
        raise ValueError(f"directions_per_call must be >= 1, got {directions_per_call}")
    E = torch.einsum("mj,jn->jmn", U.to(torch.float64), Vh.to(torch.float64))
    cols = layer.to_flat(E).to(device=problem.device, dtype=problem.dtype)  # (numel, K)
    h = torch.empty(K, dtype=torch.float64)
    calls = 0
    for a in range(0, K, per_call):
        b = min(a + per_call, K)
        block = cols[:, a:b]
        if method == "block":
            HV = block_hvp(problem, layer, block, k, mode=hvp_mode)
        else:
            V = torch.zeros(problem.num_params, b - a, dtype=problem.dtype, device=problem.device)
            V[layer.flat] = block
            HV = problem.hvp(V, k, mode=hvp_mode)[layer.flat]
        h[a:b] = (block.double() * HV).sum(dim=0).cpu()
        calls += 1
    return h, calls


# --------------------------------------------------------------------------- #
# fits
# --------------------------------------------------------------------------- #

_TRIANGLE_FIELDS = ("alpha", "r2_alpha", "gamma", "r2_gamma", "s_hessian", "r2_s_hessian",
                    "predicted_s", "triangle_error", "triangle_relative_error")


def _layer_fits(singular_values: np.ndarray, h: np.ndarray, weight_sigma: np.ndarray,
                rank: int) -> dict:
    """Every per-layer fit, NaN plus a reason where data are insufficient."""
    K = singular_values.size
    r = min(rank, K)
    out: dict = dict.fromkeys(_TRIANGLE_FIELDS, _NAN)
    out.update(n_fit=r, n_alpha=0, best_model_bic="", pr_h=_NAN, pr_sigma2=_NAN, pr_h_bound=_NAN,
               s_weight=_NAN, r2_s_weight=_NAN,
               aic=dict.fromkeys(RANK_MODELS, _NAN), bic=dict.fromkeys(RANK_MODELS, _NAN))
    reasons: list[str] = []
    if r < K:
        reasons.append(f"gradient numerical rank {r} < top_k={K}; fits use ranks 1..{r}")
    if r == 0:
        reasons.append("the layer gradient is zero")
        out["fit_reason"] = "; ".join(reasons)
        out["rank_profile_reason"] = "the layer gradient is zero"
    else:
        tri = alpha_gamma_s(singular_values[:r], h[:r])
        out.update({f: getattr(tri, f) for f in _TRIANGLE_FIELDS})
        out["n_alpha"] = tri.n_alpha
        if tri.reason:
            reasons.append(tri.reason)
        profile = rank_profile(singular_values[:r])
        out["best_model_bic"] = profile.best_model_bic
        out["aic"] = {m: profile.fits[m].aic for m in RANK_MODELS}
        out["bic"] = {m: profile.fits[m].bic for m in RANK_MODELS}
        out["rank_profile_reason"] = profile.reason
        out["pr_sigma2"] = participation_ratio(singular_values[:r] ** 2)
        h_pos = np.clip(h[:r], 0.0, None)
        if h_pos.any():
            out["pr_h"] = participation_ratio(h_pos)
        else:
            reasons.append("no positive h; pr_h is undefined")
        s = out["s_hessian"]
        if math.isfinite(s) and s > 1.0:
            out["pr_h_bound"] = zeta_bound(s)
        out["fit_reason"] = "; ".join(reasons)
    positive = weight_sigma[weight_sigma > 0]
    if positive.size:
        fit = s_weight(positive)
        out["s_weight"], out["r2_s_weight"] = fit.s_weight, fit.r2_s_weight
        out["s_weight_reason"] = fit.reason
    else:
        out["s_weight_reason"] = "the weight matrix is zero"
    return out


# --------------------------------------------------------------------------- #
# dataset helpers
# --------------------------------------------------------------------------- #


def layer_coords(layers: Sequence[Layer]) -> dict:
    """Coordinates over ``layer`` describing each layer."""
    names = [layer.name for layer in layers]
    return {
        "layer": ("layer", np.array(names, dtype=str)),
        "layer_kind": ("layer", np.array([layer.kind for layer in layers], dtype=str)),
        "layer_group": ("layer", np.array([layer.group for layer in layers], dtype=str)),
        "module_type": ("layer", np.array([type(layer.module).__name__ for layer in layers], dtype=str)),
        "matrix_rows": ("layer", np.array([layer.matrix_shape[0] for layer in layers], dtype=np.int64)),
        "matrix_cols": ("layer", np.array([layer.matrix_shape[1] for layer in layers], dtype=np.int64)),
        "param_shape": ("layer", np.array(["x".join(map(str, layer.param_shape)) for layer in layers],
                                          dtype=str)),
    }


def data_var(dims, values, long_name: str, units: str) -> tuple:
    """``(dims, values, {"long_name": ..., "units": ...})`` for ``xr.Dataset(data_vars=...)``."""
    return dims, values, {"long_name": long_name, "units": units}


def layer_rank_frame(problem: Problem, layers: Sequence[Layer], k: int, K: int, requested,
                      measurement: str, title: str) -> tuple[dict, dict]:
    """Coordinates (:func:`layer_coords` and ``rank`` 1..K) and the leading attrs
    (provenance, ``measurement``, ``title``, ``top_k``, ``layers_requested``) of a
    per-layer, per-rank spectral Dataset."""
    coords = layer_coords(layers)
    coords["rank"] = ("rank", np.arange(1, K + 1, dtype=np.int64))
    attrs = provenance(
        problem,
        num_samples=k,
        samples=f"first k samples [0, {k}) of {problem.num_samples}",
        hvp_mode=problem.hvp_mode,
        measurement=measurement,
        title=title,
        top_k=K,
        layers_requested=requested if requested is None or isinstance(requested, str) else list(requested),
    )
    return coords, attrs


# --------------------------------------------------------------------------- #
# layer_spectra
# --------------------------------------------------------------------------- #


def layer_spectra(problem: Problem, *, layers: str | Iterable[str] | None = None, top_k: int = 20,
                  k: int | None = None, method: str = "block",
                  directions_per_call: int | None = None,
                  hvp_mode: str | None = None) -> xr.Dataset:
    """Gradient singular values, exact directional curvatures and their fits, per layer.

    For each layer (see the module docstring for which weights are layers and
    how they are oriented) with G = ∇_W L_k(w*) = U Σ Vᵀ over the first ``k``
    samples:

    - ``singular_value[j]`` = σ_j, the top-K singular values of G;
    - ``h[j]`` = vec(u_j v_jᵀ)ᵀ H_WW vec(u_j v_jᵀ), exact, all K directions in
      one batched HVP call (``method``: "block" differentiates only the
      layer's weight, "full" uses :meth:`Problem.hvp` on N-vectors that are
      zero outside the layer; see :func:`directional_curvature`);
    - ``weight_sigma[j]``: top-K singular values of W itself at w*;
    - per layer: α, γ, s with R², predicted s = αγ and its (relative) error,
      ``s_weight`` (fit on the top-K ``weight_sigma``), rank-profile AIC/BIC
      with the BIC winner, participation ratios PR(h⁺) and PR(σ²), and the
      zeta bound ζ(s)²/ζ(2s) on PR_h (NaN unless s > 1).

    Parameters
    ----------
    problem : Problem
        Model, per-sample loss and ordered samples.
    layers : str, iterable of str, or None
        None (all Linear / Conv / HF Conv1D weights; embeddings excluded), a
        parameter name, a glob, or a list of them.
    top_k : int
        K, the number of singular directions per layer (≤ min(m, n) for
        every selected layer).
    k : int, optional
        Use samples ``[0, k)`` (default: all of them).
    method : {"block", "full"}
        How ``H E_j`` is formed (default "block").
    directions_per_call : int, optional
        HVP columns per call (None = all K in one call).
    hvp_mode : str, optional
        Override of the problem's HVP mode.

    Returns
    -------
    xarray.Dataset
        Dims ``layer``, ``rank`` (1..K) and ``rank_model``; float64
        variables ``singular_value``, ``h``, ``weight_sigma`` (layer, rank);
        ``aic``, ``bic`` (layer, rank_model); per-layer exponents, R²,
        participation ratios, counts (``num_hvps`` = K, ``hvp_calls``,
        ``numerical_rank``, ``n_fit``, ``n_alpha``) and the strings
        ``best_model_bic``, ``fit_reason``, ``rank_profile_reason``,
        ``s_weight_reason`` ("" when nothing is missing). Attrs hold the
        provenance (:func:`curvprobe.results.provenance`) as Python values;
        write the Dataset with :func:`curvprobe.results.save`, which encodes
        them for netCDF.

    Raises
    ------
    ValueError
        Unknown layer names (the message lists the available ones), a
        selected parameter that is not a 2-D/4-D weight, ``top_k`` larger
        than a selected layer's rank min(m, n), or a bad ``k``.
    """
    chosen = select_layers(problem, layers)
    top_k = check_top_k(top_k, chosen)
    k = resolve_k(problem, k)
    t0 = time.perf_counter()
    gradient = problem.gradient(k=k)
    t_grad = time.perf_counter() - t0
    m, fits = _measure_layers(problem, chosen, gradient, top_k, k, method=method,
                              directions_per_call=directions_per_call, hvp_mode=hvp_mode)
    used = curvature_path(problem, method)
    return _spectra_dataset(problem, chosen, k, top_k, m["singular_value"], m["h"], m["weight_sigma"],
                            m["numerical_rank"], m["hvp_calls"], m["seconds"], fits, t_grad,
                            time.perf_counter() - t0, layers, used)


def _measure_layers(problem: Problem, chosen: Sequence[Layer], gradient: Tensor, K: int, k: int, *,
                    method: str, directions_per_call: int | None,
                    hvp_mode: str | None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Per layer: ``singular_value``, ``h``, ``weight_sigma`` (L, K),
    ``numerical_rank``, ``hvp_calls`` and ``seconds`` (L,), and the fits
    (:func:`_layer_fits`)."""
    w_star = problem.params
    L = len(chosen)
    singular_values = np.empty((L, K))
    h = np.empty((L, K))
    weight_sigma = np.empty((L, K))
    ranks = np.empty(L, dtype=np.int64)
    calls = np.empty(L, dtype=np.int64)
    seconds = np.empty(L)
    fits = []
    for i, layer in enumerate(chosen):
        t1 = time.perf_counter()
        # rank tolerance from the problem's dtype: the float64 accumulation
        # does not make float32 gradients more accurate
        s, U, Vh, ranks[i] = gradient_svd(layer, gradient, K, precision=problem.dtype)
        hj, calls[i] = directional_curvature(problem, layer, U, Vh, k, method=method,
                                             directions_per_call=directions_per_call,
                                             hvp_mode=hvp_mode)
        seconds[i] = time.perf_counter() - t1
        singular_values[i], h[i] = s.cpu().numpy(), hj.numpy()
        weight_sigma[i] = torch.linalg.svdvals(layer.matrix(w_star).double())[:K].cpu().numpy()
        fits.append(_layer_fits(singular_values[i], h[i], weight_sigma[i], int(ranks[i])))
    return {"singular_value": singular_values, "h": h, "weight_sigma": weight_sigma,
            "numerical_rank": ranks, "hvp_calls": calls, "seconds": seconds}, fits


def _spectra_dataset(problem, chosen, k, K, singular_values, h, weight_sigma, ranks, calls, seconds, fits,
                     t_grad, t_total, requested, method) -> xr.Dataset:
    per = lambda key, dtype=np.float64: np.array([f[key] for f in fits], dtype=dtype)  # noqa: E731
    one = ("layer",)
    pair = ("layer", "rank")
    data = {
        "singular_value": data_var(pair, singular_values,
                                   "singular value of the layer gradient G = dL_k/dW (decreasing in rank)",
                                   "loss/param"),
        "h": data_var(pair, h, "exact directional curvature vec(u v^T)^T H vec(u v^T)", "loss/param^2"),
        "weight_sigma": data_var(pair, weight_sigma, "singular values of the weight W", "param"),
        "alpha": data_var(one, per("alpha"), "slope of log h on log singular_value (h > 0)", "1"),
        "r2_alpha": data_var(one, per("r2_alpha"), "R^2 of the alpha fit", "1"),
        "gamma": data_var(one, per("gamma"), "minus slope of log singular_value on log rank", "1"),
        "r2_gamma": data_var(one, per("r2_gamma"), "R^2 of the gamma fit", "1"),
        "s_hessian": data_var(one, per("s_hessian"), "minus slope of log sorted h on log rank", "1"),
        "r2_s_hessian": data_var(one, per("r2_s_hessian"), "R^2 of the s fit", "1"),
        "predicted_s": data_var(one, per("predicted_s"), "alpha * gamma", "1"),
        "triangle_error": data_var(one, per("triangle_error"), "|s - alpha gamma|", "1"),
        "triangle_relative_error": data_var(one, per("triangle_relative_error"),
                                        "|s - alpha gamma| / s", "1"),
        "s_weight": data_var(one, per("s_weight"), "minus slope of log weight_sigma on log rank (top K)",
                         "1"),
        "r2_s_weight": data_var(one, per("r2_s_weight"), "R^2 of the s_weight fit", "1"),
        "pr_h": data_var(one, per("pr_h"), "participation ratio of max(h, 0)", "1"),
        "pr_sigma2": data_var(one, per("pr_sigma2"), "participation ratio of singular_value^2", "1"),
        "pr_h_bound": data_var(one, per("pr_h_bound"), "zeta(s)^2 / zeta(2s), NaN unless s > 1", "1"),
        "aic": data_var(("layer", "rank_model"),
                    np.array([[f["aic"][m] for m in RANK_MODELS] for f in fits], dtype=np.float64),
                    "AIC of the rank-profile model of log singular_value", "1"),
        "bic": data_var(("layer", "rank_model"),
                    np.array([[f["bic"][m] for m in RANK_MODELS] for f in fits], dtype=np.float64),
                    "BIC of the rank-profile model of log singular_value", "1"),
        "best_model_bic": data_var(one, per("best_model_bic", str), "rank-profile model with lowest BIC",
                               "1"),
        "numerical_rank": data_var(one, ranks, "numerical rank of G", "1"),
        "n_fit": data_var(one, per("n_fit", np.int64), "ranks used by the fits (min(rank, K))", "1"),
        "n_alpha": data_var(one, per("n_alpha", np.int64), "positive h among the fitted ranks", "1"),
        "num_hvps": data_var(one, np.full(len(chosen), K, dtype=np.int64), "HVP vectors used", "1"),
        "hvp_calls": data_var(one, calls, "Problem.hvp calls", "1"),
        "seconds": data_var(one, seconds, "wall time of SVD and curvatures", "s"),
        "fit_reason": data_var(one, per("fit_reason", str), "why triangle fields are NaN", "1"),
        "rank_profile_reason": data_var(one, per("rank_profile_reason", str),
                                    "why rank-profile fields are NaN", "1"),
        "s_weight_reason": data_var(one, per("s_weight_reason", str), "why s_weight is NaN", "1"),
    }
    coords, attrs = layer_rank_frame(problem, chosen, k, K, requested, measurement="layer_spectra",
                                      title="curvprobe layer spectra (Calvo alpha triangle)")
    coords["rank_model"] = ("rank_model", np.array(RANK_MODELS, dtype=str))
    attrs.update(
        num_hvps_total=int(K * len(chosen)),
        gradient_seconds=float(t_grad),
        seconds=float(t_total),
        h_method=method,
        h_method_description=("exact HVP of the (W, W) block of the Hessian (only W differentiated)"
                              if method == "block" else
                              "exact HVP of the full model (Problem.hvp), directions zero outside "
                              "the layer block"),
        orientation="out x in matrices; conv kernels m x (c_in*kh*kw); HF Conv1D and embedding "
                    "weights transposed",
        rank_tolerance="singular_value[0] * max(m, n) * eps(problem dtype)",
    )
    return xr.Dataset(data, coords=coords, attrs=attrs)
