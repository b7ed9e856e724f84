"""Kronecker (K-FAC) factors of a layer and the alignment decomposition of α.

See ``docs/spectral.md`` (Kronecker alignment) for the overview.

Rows and the scaling convention
    A layer applies ``z_r = W a_r`` to *rows* ``r``: one row per sample for an
    MLP layer, one per (sample, token) for a sequence model (tokens are
    flattened into the batch dimension), one per (sample, output position) for
    a convolution (``a_r`` is the unfolded patch, :func:`torch.nn.functional.unfold`,
    so ``W`` is the ``m × (c_in·kh·kw)`` kernel matrix), one per token id for an
    embedding (``a_r`` is the one-hot token). Over the first ``k`` samples
    there are ``B`` rows in total (``B = k`` for an MLP, ``k·T`` for sequences
    of length T, ``k·H_out·W_out`` for a 2-D convolution). With

        A ∈ R^{B×n}:  rows a_r (the layer input, captured by a forward hook),
        δ ∈ R^{B×m}:  rows δ_r = ∂ℓ_{i(r)} / ∂z_r,

    where ``ℓ_{i(r)}`` is the per-sample loss of the sample that owns row r
    (obtained by back-propagating the *sum* of the per-sample losses, so δ does
    not carry the 1/k of the mean; for a per-sequence mean token loss it does
    carry that loss's 1/T), the factors are

        C_δ = δᵀδ / B   (m × m),      C_A = AᵀA / B   (n × n),

    accumulated in float64 over chunks of samples. They are the empirical
    (true-label) form of the K-FAC Gauss–Newton factors, and they reproduce the
    gradient exactly: ``∇_W L_k = δᵀA / k``. That identity is checked for every
    layer (``hook_gradient_error``), which catches a module whose weight is also
    used outside its ``forward`` (tied weights) or a hook that saw the wrong rows.

    Under the K-FAC model ``H_WW ≈ (B/k) · C_A ⊗ C_δ`` (per-row terms of the
    per-sample Fisher, cross-row terms dropped), so ``χ = h / h^Kron`` absorbs
    the constant ``B/k`` (rows per sample, reported); constants do not change
    any slope.

Alignment (Calvo)
    With G = U Σ Vᵀ (top K), ``C_δ = Q_δ Λ_δ Q_δᵀ`` and ``C_A = Q_A Λ_A Q_Aᵀ``
    (eigenvalues decreasing):

        ρ_k^(δ) = u_kᵀ C_δ u_k / [Λ_δ]_kk,   ρ_k^(A) = v_kᵀ C_A v_k / [Λ_A]_kk,
        Φ_k = ρ_k^(δ) ρ_k^(A),   Λ_k = [Λ_δ]_kk [Λ_A]_kk,
        h_k^Kron = (u_kᵀ C_δ u_k)(v_kᵀ C_A v_k) = Φ_k Λ_k,   χ_k = h_k / h_k^Kron.

    Slopes on log σ_k (OLS with intercept, natural logs): β of log Λ_k, φ of
    log Φ_k, α of log h_k, α_Kron of log h_k^Kron, and of log χ_k. Because an
    OLS slope is linear in its response and log h = log χ + log Φ + log Λ, on a
    common set of ranks

        α = β + φ + slope(log χ)    and    α_Kron = β + φ    exactly,

    so the Kronecker prediction ``β + φ`` misses α by exactly the χ slope. The
    paper's headline form ``α = 2 + φ`` is the case β = 2 (Λ_k ∝ σ_k²); both
    predictions are reported. All slopes of one layer use the same ranks: those
    with σ_k above the numerical-rank tolerance and h_k, Φ_k, Λ_k > 0 (so α here
    equals :func:`~curvprobe.spectral.layers.layer_spectra`'s α whenever Φ and Λ
    are positive at every rank with h_k > 0, the usual case). Fewer than 3 such
    ranks give NaN and a reason.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from curvprobe.core.problem import Problem
from curvprobe.spectral.fits import MIN_POINTS, ols_fit
from curvprobe.spectral.layers import (
    Layer,
    check_top_k,
    curvature_path,
    data_var,
    directional_curvature,
    gradient_svd,
    layer_rank_frame,
    resolve_k,
    select_layers,
)

__all__ = ["KRONECKER_KINDS", "KroneckerFactors", "kronecker_alignment", "kronecker_factors"]

KRONECKER_KINDS = ("linear", "conv1d", "conv2d", "hf_conv1d", "embedding")
"""Layer kinds whose inputs the hooks know how to turn into rows."""

MAX_FACTOR_SIZE = 8192
"""Default bound on m and n: the factors are dense (m × m and n × n, float64)."""

_NAN = float("nan")


@dataclass(frozen=True)
class KroneckerFactors:
    """Gauss–Newton (K-FAC) factors of one layer over samples ``[0, k)``.

    Attributes
    ----------
    layer : str
        Parameter name.
    c_delta : Tensor, shape (m, m)
        ``C_δ = δᵀδ / B``, float64.
    c_a : Tensor, shape (n, n)
        ``C_A = AᵀA / B``, float64.
    rows : int
        B, rows over all k samples (and all calls of the module).
    num_samples : int
        k.
    gradient : Tensor, shape (m, n)
        ``δᵀA / k``, float64, which must equal ∇_W L_k.
    """

    layer: str
    c_delta: Tensor
    c_a: Tensor
    rows: int
    num_samples: int
    gradient: Tensor

    @property
    def rows_per_sample(self) -> float:
        """B / k: the constant χ absorbs under the K-FAC model."""
        return self.rows / self.num_samples


# --------------------------------------------------------------------------- #
# rows from hooks
# --------------------------------------------------------------------------- #


def _check_supported(layer: Layer, max_factor_size: int) -> None:
    if layer.kind not in KRONECKER_KINDS:
        raise ValueError(
            f"layer {layer.name!r} is a {layer.kind} parameter of a {type(layer.module).__name__}; "
            f"Kronecker factors need the weight of one of: nn.Linear, nn.Conv1d, nn.Conv2d, "
            f"nn.Embedding, Hugging Face Conv1D"
        )
    if layer.shared:
        raise ValueError(f"layer {layer.name!r} is shared by several modules (tied weights); "
                         "its Kronecker factors are not defined by one module's rows")
    module = layer.module
    if layer.kind in ("conv1d", "conv2d"):
        if module.groups != 1:
            raise ValueError(f"layer {layer.name!r}: grouped convolutions (groups={module.groups}) "
                             "are not supported")
        if module.padding_mode != "zeros":
            raise ValueError(f"layer {layer.name!r}: padding_mode={module.padding_mode!r} is not "
                             "supported (only 'zeros')")
    if layer.kind == "embedding" and module.max_norm is not None:
        raise ValueError(f"layer {layer.name!r}: embeddings with max_norm are not supported")
    m, n = layer.matrix_shape
    if max(m, n) > max_factor_size:
        raise ValueError(
            f"layer {layer.name!r}: factor sizes {m} and {n} exceed max_factor_size="
            f"{max_factor_size} (the factors are dense float64 matrices); raise it or skip the layer"
        )


def _conv_rows(module: nn.Conv1d | nn.Conv2d, x: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:
    """Unfolded input patches (rows × c_in·k…) and output gradients (rows × m) of a conv."""
    kernel: tuple[int, ...] = module.kernel_size
    stride, dilation, padding = module.stride, module.dilation, module.padding
    if len(kernel) == 1:  # Conv1d as a 1 × L image
        x, dz = x.unsqueeze(-2), dz.unsqueeze(-2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        padding = padding if isinstance(padding, str) else (0, *padding)
    if isinstance(padding, str):  # "valid" or "same"
        if padding == "same":
            pads: list[int] = []
            for size, dil in zip(reversed(kernel), reversed(dilation)):
                total = dil * (size - 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        padding = (0, 0)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (b, n, P)
    if patches.shape[-1] != dz.shape[-1] * dz.shape[-2]:
        raise RuntimeError("unfolded patch count does not match the conv output size")
    A = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    delta = dz.flatten(start_dim=2).transpose(1, 2).reshape(-1, dz.shape[1])
    return A, delta


def _rows(layer: Layer, x: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:
    """(A (rows, n), δ (rows, m)) in float64 for one call of the layer's module."""
    m, n = layer.matrix_shape
    if layer.kind in ("conv1d", "conv2d"):  # the kinds of nn.Conv1d / nn.Conv2d weights
        A, delta = _conv_rows(cast("nn.Conv1d | nn.Conv2d", layer.module), x, dz)
    elif layer.kind == "embedding":
        A = F.one_hot(x.reshape(-1), n)
        delta = dz.reshape(-1, m)
    else:  # linear, hf_conv1d: tokens and any leading dims are rows
        A, delta = x.reshape(-1, n), dz.reshape(-1, m)
    return A.to(torch.float64), delta.to(torch.float64)


def kronecker_factors(problem: Problem, *, layers: str | Iterable[str] | None = None,
                      k: int | None = None,
                      max_factor_size: int = MAX_FACTOR_SIZE) -> dict[str, KroneckerFactors]:
    """K-FAC factors ``C_δ = δᵀδ/B`` and ``C_A = AᵀA/B`` of each layer (see the module docstring).

    One forward and one backward pass per chunk of samples at w*, through
    :meth:`Problem.chunk_losses` (``functional_call`` with the problem's
    parameters; the model's own parameters are not touched). Forward hooks are
    registered on the layers' modules for the duration of the call and removed
    in ``finally``; the output gradients come from ``torch.autograd.grad`` of
    the sum of per-sample losses with respect to the hooked outputs.

    Parameters
    ----------
    problem : Problem
        The problem.
    layers : str, iterable of str, or None
        As in :func:`~curvprobe.spectral.layers.select_layers`.
    k : int, optional
        Samples ``[0, k)`` (default all).
    max_factor_size : int
        Refuse layers with m or n above it (the factors are dense).

    Returns
    -------
    dict of str to KroneckerFactors
        ``{name: KroneckerFactors}`` in model order.

    Raises
    ------
    ValueError
        Bad layer names (see ``select_layers``), a parameter not owned by a
        supported module, tied weights, grouped convolutions, or a factor
        larger than ``max_factor_size``.
    """
    chosen = select_layers(problem, layers)
    for layer in chosen:
        _check_supported(layer, max_factor_size)
    k = resolve_k(problem, k)
    return _factors(problem, chosen, k)


@dataclass
class _FactorSums:
    """Running sums over one layer's rows: ``δᵀδ``, ``AᵀA``, ``δᵀA`` (float64, CPU)
    and the row count B."""

    delta_delta: Tensor
    a_a: Tensor
    delta_a: Tensor
    rows: int = 0

    @classmethod
    def zeros(cls, layer: Layer) -> _FactorSums:
        m, n = layer.matrix_shape
        return cls(torch.zeros(m, m, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64),
                   torch.zeros(layer.matrix_shape, dtype=torch.float64))

    def add(self, A: Tensor, delta: Tensor) -> None:
        self.delta_delta += (delta.T @ delta).cpu()
        self.a_a += (A.T @ A).cpu()
        self.delta_a += (delta.T @ A).cpu()
        self.rows += A.shape[0]

    def all_reduce(self, problem: Problem) -> None:
        """Sum the running sums over the ranks of a data-parallel problem (in place)."""
        device = problem.device
        for name in ("delta_delta", "a_a", "delta_a"):
            setattr(self, name, problem.all_reduce(getattr(self, name).to(device)).cpu())
        rows = problem.all_reduce(torch.tensor([float(self.rows)], dtype=torch.float64, device=device))
        self.rows = int(rows.item())

    def factors(self, name: str, k: int) -> KroneckerFactors:
        return KroneckerFactors(layer=name, c_delta=self.delta_delta / self.rows, c_a=self.a_a / self.rows,
                                rows=int(self.rows), num_samples=k, gradient=self.delta_a / k)


_Calls = dict[str, list[tuple[Tensor, Tensor]]]


def _capture(captured: _Calls, name: str) -> Callable[..., None]:
    """A forward hook (``with_kwargs=True``) appending ``(input, output)`` of
    each call to ``captured[name]``."""
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        captured[name].append((x.detach(), output))
    return hook


def _accumulate_chunk(problem: Problem, chosen: Sequence[Layer], captured: _Calls, w: Tensor,
                      a: int, b: int, sums: dict[str, _FactorSums]) -> None:
    """Forward samples ``[a, b)`` with the hooks on, back-propagate the sum of
    their losses to the hooked outputs and add each call's rows to ``sums``."""
    for calls in captured.values():
        calls.clear()
    wr = w.detach().requires_grad_(True)
    losses = problem.chunk_losses(wr, a, b)
    outputs = [z for layer in chosen for _, z in captured[layer.name]]
    if any(not captured[layer.name] for layer in chosen):
        missing = [layer.name for layer in chosen if not captured[layer.name]]
        raise ValueError(f"the forward pass never called the module(s) of {missing}")
    grads = iter(torch.autograd.grad(losses.sum(), outputs, allow_unused=True))
    for layer in chosen:
        for x, z in captured[layer.name]:
            dz = next(grads)
            dz = dz if dz is not None else torch.zeros_like(z)
            sums[layer.name].add(*_rows(layer, x, dz.detach()))


def _factors(problem: Problem, chosen: Sequence[Layer], k: int) -> dict[str, KroneckerFactors]:
    captured: _Calls = {layer.name: [] for layer in chosen}
    sums = {layer.name: _FactorSums.zeros(layer) for layer in chosen}
    handles = []
    try:
        for layer in chosen:
            handles.append(layer.module.register_forward_hook(_capture(captured, layer.name),
                                                              with_kwargs=True))
        w = problem.params
        for a, b in problem.local_chunks(0, k):
            _accumulate_chunk(problem, chosen, captured, w, a, b, sums)
        for layer_sums in sums.values():
            layer_sums.all_reduce(problem)
    finally:
        for handle in handles:
            handle.remove()
        for calls in captured.values():
            calls.clear()
    return {layer.name: sums[layer.name].factors(layer.name, k) for layer in chosen}


# --------------------------------------------------------------------------- #
# alignment
# --------------------------------------------------------------------------- #


def _descending_eigvals(C: Tensor, top_k: int) -> Tensor:
    return torch.linalg.eigvalsh(C).flip(0)[:top_k]


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    fit = ols_fit(x, y)
    return fit.slope, fit.r2


def _alignment_fits(singular_values: np.ndarray, h: np.ndarray, h_kron: np.ndarray, Phi: np.ndarray,
                    Lam: np.ndarray, rank: int) -> dict[str, Any]:
    names = ("alpha", "beta", "phi", "alpha_kron", "chi_slope")
    out: dict[str, Any] = dict.fromkeys(names, _NAN) | {f"r2_{n}": _NAN for n in names}
    K = singular_values.size
    valid = np.arange(K) < min(rank, K)
    use = valid & (h > 0) & (h_kron > 0) & (Phi > 0) & (Lam > 0)
    out["n_fit"] = int(use.sum())
    reasons = []
    if min(rank, K) < K:
        reasons.append(f"gradient numerical rank {rank} < top_k={K}")
    if use.sum() < MIN_POINTS:
        reasons.append(f"fewer than {MIN_POINTS} ranks with a singular value above tolerance and "
                       f"h, h_kron, Phi, Lambda > 0 ({int(use.sum())} of K={K}); slopes are undefined")
    elif np.ptp(singular_values[use]) == 0.0:
        reasons.append("the singular values are constant over the usable ranks; slopes are undefined")
    else:
        x = np.log(singular_values[use])
        for name, y in (("alpha", h), ("beta", Lam), ("phi", Phi), ("alpha_kron", h_kron),
                        ("chi_slope", h / h_kron)):
            out[name], out[f"r2_{name}"] = _slope(x, np.log(y[use]))
    out["alpha_pred_beta_phi"] = out["beta"] + out["phi"]
    out["alpha_pred_2_phi"] = 2.0 + out["phi"]
    out["alpha_error_beta_phi"] = out["alpha"] - out["alpha_pred_beta_phi"]
    out["alpha_error_2_phi"] = out["alpha"] - out["alpha_pred_2_phi"]
    chi = h[valid] / h_kron[valid]
    chi = chi[np.isfinite(chi)]
    out["chi_median"] = float(np.median(chi)) if chi.size else _NAN
    out["reason"] = "; ".join(reasons)
    return out


def kronecker_alignment(problem: Problem, *, layers: str | Iterable[str] | None = None,
                        top_k: int = 20, k: int | None = None,
                        max_factor_size: int = MAX_FACTOR_SIZE, method: str = "block",
                        hvp_mode: str | None = None) -> xr.Dataset:
    """Kronecker factors, alignment ratios and the decomposition α = β + φ, per layer.

    For each layer: G = U Σ Vᵀ (top K) over samples ``[0, k)``, exact h_k (one
    batched HVP call of K columns, as in ``layer_spectra``), the factors
    ``C_δ``, ``C_A`` from hooks (:func:`kronecker_factors`; conventions in the
    module docstring), and per rank ρ^(δ), ρ^(A), Φ, Λ, h^Kron, χ; per layer
    the slopes on log σ_k: α, β, φ, α_Kron, slope(log χ) with R², the two
    predictions β + φ and 2 + φ of α and their errors, and the median χ.

    Parameters
    ----------
    problem : Problem
        The problem.
    layers : str, iterable of str, or None
        None (Linear / Conv / HF Conv1D weights; embeddings only when named),
        a name, a glob, or a list of them.
    top_k : int
        K ≤ min(m, n) for every selected layer.
    k : int, optional
        Samples ``[0, k)`` (default all).
    max_factor_size : int
        Refuse layers with m or n above it.
    method : {"block", "full"}
        How h is computed (default "block";
        :func:`~curvprobe.spectral.layers.directional_curvature`).
    hvp_mode : str, optional
        Override of the problem's HVP mode for h.

    Returns
    -------
    xarray.Dataset
        Dims ``layer`` and ``rank``: float64 (layer, rank)
        ``singular_value``, ``h``, ``lambda_delta``, ``lambda_a`` (top-K
        factor eigenvalues, decreasing), ``u_c_delta_u``, ``v_c_a_v``,
        ``rho_delta``, ``rho_a``, ``Phi``, ``Lambda``, ``h_kron``, ``chi``;
        per layer ``alpha``, ``beta``, ``phi``, ``alpha_kron``,
        ``chi_slope`` (each with ``r2_*``), ``alpha_pred_beta_phi``,
        ``alpha_pred_2_phi``, ``alpha_error_beta_phi``,
        ``alpha_error_2_phi``, ``chi_median``, ``rows``,
        ``rows_per_sample``, ``hook_gradient_error``, ``n_fit``,
        ``numerical_rank`` and ``fit_reason``. Attrs: provenance
        (:func:`curvprobe.results.provenance`) and the scaling convention,
        as Python values; write with :func:`curvprobe.results.save`.

    Raises
    ------
    ValueError
        As :func:`kronecker_factors`, and ``top_k`` larger than a selected
        layer's rank min(m, n).
    """
    chosen = select_layers(problem, layers)
    top_k = check_top_k(top_k, chosen)
    for layer in chosen:
        _check_supported(layer, max_factor_size)
    k = resolve_k(problem, k)
    t0 = time.perf_counter()
    factors = _factors(problem, chosen, k)
    tol = 1e3 * torch.finfo(problem.dtype).eps
    per_rank, ranks, grad_err = _rank_measurements(problem, chosen, factors, top_k, k, tol,
                                                   method=method, hvp_mode=hvp_mode)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_rank |= _alignment_ratios(per_rank)
        fits = [_alignment_fits(per_rank["singular_value"][i], per_rank["h"][i], per_rank["h_kron"][i],
                                per_rank["Phi"][i], per_rank["Lambda"][i], int(ranks[i]))
                for i in range(len(chosen))]
    rows = np.array([factors[layer.name].rows for layer in chosen], dtype=np.int64)
    data = _alignment_variables(per_rank, fits, rows, k, grad_err, ranks)
    coords, attrs = _alignment_frame(problem, chosen, k, top_k, layers, method, tol)
    attrs["seconds"] = float(time.perf_counter() - t0)
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _alignment_frame(problem: Problem, chosen: Sequence[Layer], k: int, K: int,
                     requested: str | Iterable[str] | None, method: str,
                     tol: float) -> tuple[dict, dict[str, Any]]:
    """Coordinates and attrs (all but ``seconds``) of :func:`kronecker_alignment`'s Dataset."""
    coords, attrs = layer_rank_frame(problem, chosen, k, K, requested, measurement="kronecker_alignment",
                                      title="curvprobe Kronecker alignment (Calvo alpha = beta + phi)")
    attrs.update(
        factors="C_delta = delta^T delta / B, C_A = A^T A / B; delta_r = d(loss of the row's "
                "sample)/d(layer output row), from backward of the sum of per-sample losses; "
                "rows = samples x tokens (sequences) or x output positions (conv, unfold)",
        kfac_model="H_WW ~ (B/k) C_A (x) C_delta; chi absorbs B/k",
        hook_gradient_tolerance=float(tol),
        h_method=curvature_path(problem, method),
        num_hvps_total=int(K * len(chosen)),
    )
    return coords, attrs


def _hook_gradient_error(layer: Layer, factors: KroneckerFactors, G: Tensor, tol: float) -> float:
    """``‖δᵀA/k − G‖ / ‖G‖`` (NaN for G = 0), with a warning (pointing at the
    caller of :func:`kronecker_alignment`) when it exceeds ``tol``."""
    err = float((factors.gradient - G).norm() / G.norm()) if float(G.norm()) > 0 else _NAN
    if math.isfinite(err) and err > tol:
        warnings.warn(
            f"layer {layer.name!r}: the hooked rows do not reproduce the gradient "
            f"(relative error {err:.2e} > {tol:.1e}); its Kronecker factors do not "
            "describe this parameter (is the weight also used outside the module's forward?)",
            RuntimeWarning, stacklevel=4,
        )
    return err


def _rank_measurements(problem: Problem, chosen: Sequence[Layer], factors: dict[str, KroneckerFactors],
                       K: int, k: int, tol: float, *, method: str,
                       hvp_mode: str | None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per layer and rank (L, K): ``singular_value``, ``h``, ``lambda_delta``,
    ``lambda_a``, ``u_c_delta_u``, ``v_c_a_v``; per layer: the numerical rank
    of G and the hook gradient error (:func:`_hook_gradient_error`)."""
    gradient = problem.gradient(k=k)
    L = len(chosen)
    per_rank = {name: np.empty((L, K)) for name in
                ("singular_value", "h", "lambda_delta", "lambda_a", "u_c_delta_u", "v_c_a_v")}
    ranks = np.empty(L, dtype=np.int64)
    grad_err = np.empty(L)
    for i, layer in enumerate(chosen):
        f = factors[layer.name]
        singular_values, U, Vh, ranks[i] = gradient_svd(layer, gradient, K, precision=problem.dtype)
        grad_err[i] = _hook_gradient_error(layer, f, layer.matrix(gradient), tol)
        h, _ = directional_curvature(problem, layer, U, Vh, k, method=method, hvp_mode=hvp_mode)
        per_rank["singular_value"][i] = singular_values.numpy()
        per_rank["h"][i] = h.numpy()
        per_rank["lambda_delta"][i] = _descending_eigvals(f.c_delta, K).numpy()
        per_rank["lambda_a"][i] = _descending_eigvals(f.c_a, K).numpy()
        per_rank["u_c_delta_u"][i] = torch.einsum("mk,mp,pk->k", U, f.c_delta, U).numpy()
        per_rank["v_c_a_v"][i] = torch.einsum("kn,np,kp->k", Vh, f.c_a, Vh).numpy()
    return per_rank, ranks, grad_err


def _alignment_ratios(per_rank: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ρ^(δ), ρ^(A), Φ, Λ, h^Kron and χ (L, K) from the measured quantities
    (call under ``np.errstate(divide="ignore", invalid="ignore")``)."""
    rho_delta = per_rank["u_c_delta_u"] / per_rank["lambda_delta"]
    rho_a = per_rank["v_c_a_v"] / per_rank["lambda_a"]
    h_kron = per_rank["u_c_delta_u"] * per_rank["v_c_a_v"]
    return {
        "rho_delta": rho_delta,
        "rho_a": rho_a,
        "Phi": rho_delta * rho_a,
        "Lambda": per_rank["lambda_delta"] * per_rank["lambda_a"],
        "h_kron": h_kron,
        "chi": np.where(h_kron != 0, per_rank["h"] / np.where(h_kron != 0, h_kron, 1.0), np.nan),
    }


_RANK_VARIABLES = (  # (name, long_name, units) of the (layer, rank) variables
    ("singular_value", "singular value of the layer gradient G = dL_k/dW (decreasing in rank)",
     "loss/param"),
    ("h", "exact directional curvature along u_k v_k^T", "loss/param^2"),
    ("lambda_delta", "eigenvalues of C_delta (decreasing)", "loss^2/output^2"),
    ("lambda_a", "eigenvalues of C_A (decreasing)", "input^2"),
    ("u_c_delta_u", "u_k^T C_delta u_k", "loss^2/output^2"),
    ("v_c_a_v", "v_k^T C_A v_k", "input^2"),
    ("rho_delta", "u_k^T C_delta u_k / [Lambda_delta]_kk", "1"),
    ("rho_a", "v_k^T C_A v_k / [Lambda_A]_kk", "1"),
    ("Phi", "alignment rho_delta * rho_a", "1"),
    ("Lambda", "[Lambda_delta]_kk [Lambda_A]_kk", "loss^2/param^2"),
    ("h_kron", "(u^T C_delta u)(v^T C_A v)", "loss^2/param^2"),
    ("chi", "h / h_kron (includes the constant rows_per_sample)", "1/loss"),
)

_SLOPES = (  # (name, long_name) of the per-layer slopes, each followed by its r2_<name>
    ("alpha", "slope of log h on log singular_value"),
    ("beta", "slope of log Lambda on log singular_value"),
    ("phi", "slope of log Phi on log singular_value"),
    ("alpha_kron", "slope of log h_kron on log singular_value (= beta + phi)"),
    ("chi_slope", "slope of log chi on log singular_value (= alpha - beta - phi)"),
)

_PREDICTIONS = (  # (name, long_name, units) of the other per-layer fit results
    ("alpha_pred_beta_phi", "Kronecker prediction beta + phi", "1"),
    ("alpha_pred_2_phi", "headline prediction 2 + phi", "1"),
    ("alpha_error_beta_phi", "alpha - (beta + phi)", "1"),
    ("alpha_error_2_phi", "alpha - (2 + phi)", "1"),
    ("chi_median", "median of chi over ranks above tolerance", "1/loss"),
)


def _alignment_variables(per_rank: dict[str, np.ndarray], fits: Sequence[dict[str, Any]],
                         rows: np.ndarray, k: int, grad_err: np.ndarray,
                         ranks: np.ndarray) -> dict[str, tuple]:
    """The data variables of :func:`kronecker_alignment`'s Dataset, in order."""
    def per(key: str, dtype: Any = np.float64) -> np.ndarray:
        return np.array([f[key] for f in fits], dtype=dtype)

    one, pair = ("layer",), ("layer", "rank")
    L, K = per_rank["h"].shape
    data = {name: data_var(pair, per_rank[name], long_name, units)
            for name, long_name, units in _RANK_VARIABLES}
    for name, long_name in _SLOPES:
        data[name] = data_var(one, per(name), long_name, "1")
        data[f"r2_{name}"] = data_var(one, per(f"r2_{name}"), f"R^2 of the {name} fit", "1")
    data |= {name: data_var(one, per(name), long_name, units) for name, long_name, units in _PREDICTIONS}
    data.update({
        "rows": data_var(one, rows, "rows B (samples x tokens / positions)", "1"),
        "rows_per_sample": data_var(one, rows / k, "B / k", "1"),
        "hook_gradient_error": data_var(one, grad_err, "||delta^T A / k - G|| / ||G||", "1"),
        "numerical_rank": data_var(one, ranks, "numerical rank of G", "1"),
        "n_fit": data_var(one, per("n_fit", np.int64), "ranks used by every slope", "1"),
        "num_hvps": data_var(one, np.full(L, K, dtype=np.int64), "HVP vectors used", "1"),
        "fit_reason": data_var(one, per("reason", str), "why slopes are NaN", "1"),
    })
    return data
