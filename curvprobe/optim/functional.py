"""The optimizers' arithmetic as pure functions on tensors (``docs/optimizer.md``).

A parameter with two or more dimensions is a matrix ``W ∈ R^{m×n}``: ``m`` is
its first dimension (output features) and ``n`` the product of the others, so
a convolution kernel ``(c_out, c_in, kh, kw)`` is the ``c_out × (c_in·kh·kw)``
matrix it applies to unfolded patches (the orientation of
:mod:`curvprobe.spectral.layers`). For its (momentum) gradient
``G = U diag(σ) Vᵀ`` with ``σ_1 ≥ σ_2 ≥ … ≥ 0``:

    σ̂_j = σ_j / σ_1                     (normalised singular values, σ̂_1 = 1),
    T(σ̂; α, δ) = σ̂ / (σ̂^α + δ),         T = 0 where σ̂_j ≤ max(m, n)·eps,
    D = U diag(T(σ̂)) Vᵀ,                 the spectral direction,
    Δ = ρ · D / rms(D),                   rms(D) = ‖D‖_F / √(mn),  ρ = :data:`ADAMW_RMS`.

The step is ``W ← W − lr · Δ``. ``α = 0`` moves along G, ``α = 1`` (δ = 0)
along the polar factor ``U Vᵀ`` (Muon's direction), ``α = 2`` (δ = 0) along
``U diag(1/σ) Vᵀ``, the Newton step when the curvature along ``u_j v_jᵀ`` is
``h_j ∝ σ_j²``. Why σ̂ and not σ: ``T(cσ; α, c^α δ) = c^{1−α} T(σ; α, δ)``, so
any rescaling of the singular values is a per-layer constant once δ is
expressed in the same units, and the RMS normalisation removes it. Dividing by
σ_1 makes δ dimensionless (in units of σ_1^α) and the update independent of the
gradient's scale: ``Δ(cG) = Δ(G)`` for every ``c > 0``. The RMS normalisation
fixes the step's size, which lr sets: a Newton step's absolute size needs the
curvature's scale ``c`` in ``h ≈ c σ^α``, which this optimizer does not measure
per step. ``ρ = 0.2`` is the RMS of a steady-state AdamW update in units of its
learning rate, so one learning rate serves the matrices and the AdamW-updated
parameters alike.

Zero singular values are masked, not divided by: ``T(0) = 0`` for every α and
δ (with δ > 0 that is the formula's own limit; with δ = 0 and α > 1 the formula
diverges), so a rank-deficient gradient moves only inside its row and column
spaces. The SVD and everything after it run in :func:`state_dtype` of the
gradient: float32 for float32, bfloat16 and float16 parameters, float64 for
float64 ones.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ADAMW_RMS", "adamw_update", "matrix_view", "rms_normalise", "spectral_direction",
           "spectral_update", "state_dtype", "transfer"]

ADAMW_RMS = 0.2
"""ρ: RMS of the spectral update in units of lr (the RMS of a steady-state AdamW
update, Liu et al. 2025, "Muon is scalable for LLM training")."""


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the arithmetic and optimizer state for parameters of ``dtype``:
    at least float32 (``torch.promote_types(dtype, torch.float32)``)."""
    return torch.promote_types(dtype, torch.float32)


def matrix_view(x: Tensor) -> Tensor:
    """``x`` (m, d_2, …, d_r), r ≥ 2, as the ``m × (d_2⋯d_r)`` matrix it applies (a view when possible).

    Raises
    ------
    ValueError
        ``x`` has fewer than two dimensions.
    """
    if x.dim() < 2:
        raise ValueError(f"a matrix needs >= 2 dimensions, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def transfer(sigma_hat: Tensor, alpha: float, damping: float) -> Tensor:
    """``T(σ̂; α, δ) = σ̂ / (σ̂^α + δ)``, and 0 where ``σ̂ = 0``.

    Parameters
    ----------
    sigma_hat : Tensor, shape (r,)
        Non-negative normalised singular values (dimensionless).
    alpha : float
        Curvature exponent α ≥ 0 (``h ∝ σ^α``).
    damping : float
        δ ≥ 0, in units of σ̂^α. For δ > 0 the largest multiplier is reached
        at ``σ̂ = (δ/(α−1))^{1/α}`` when α > 1; below ``σ̂ ≈ δ^{1/α}`` the step
        shrinks like σ̂/δ (gradient descent) instead of growing.

    Returns
    -------
    Tensor, shape (r,)
        The multipliers, same dtype as ``sigma_hat``.
    """
    positive = sigma_hat > 0
    safe = torch.where(positive, sigma_hat, torch.ones_like(sigma_hat))
    return torch.where(positive, safe / (safe**alpha + damping), torch.zeros_like(sigma_hat))


def spectral_direction(G: Tensor, alpha: float, damping: float) -> Tensor:
    """``D = U diag(T(σ̂; α, δ)) Vᵀ`` for ``G = U diag(σ) Vᵀ``, ``σ̂ = σ/σ_1``.

    Parameters
    ----------
    G : Tensor, shape (m, d_2, …)
        A gradient with ≥ 2 dimensions (seen as :func:`matrix_view`), any
        floating dtype.
    alpha, damping : float
        α ≥ 0 and δ ≥ 0 of :func:`transfer`.

    Returns
    -------
    Tensor
        Shape of ``G``, dtype :func:`state_dtype` of G's (float32 for
        float32 and bfloat16). Singular values at or below
        ``σ_1 · max(m, n) · eps`` of that dtype (the numerical rank of its
        SVD) get ``T = 0``; ``G = 0`` gives ``D = 0``.
    """
    dtype = state_dtype(G.dtype)
    M = matrix_view(G).to(dtype)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    sigma_hat = S / S[:1].clamp_min(torch.finfo(dtype).tiny)
    sigma_hat = torch.where(sigma_hat > max(M.shape) * torch.finfo(dtype).eps, sigma_hat,
                            torch.zeros_like(sigma_hat))
    return ((U * transfer(sigma_hat, alpha, damping)) @ Vh).reshape(G.shape)


def rms_normalise(D: Tensor, rms: float = 1.0) -> Tensor:
    """``rms · D / rms(D)`` with ``rms(D) = ‖D‖_F / √numel``; ``D = 0`` stays 0.

    No host synchronisation: the zero case is a clamp, not a branch.
    """
    norm = torch.linalg.vector_norm(D).clamp_min(torch.finfo(D.dtype).tiny)
    return D * (rms * math.sqrt(D.numel()) / norm)


def spectral_update(G: Tensor, alpha: float, damping: float, rms: float = ADAMW_RMS) -> Tensor:
    """The step ``Δ = ρ · D / rms(D)`` of a matrix parameter (module docstring).

    ``W ← W − lr · Δ``; shape of ``G``, dtype :func:`state_dtype` of its
    dtype, ``rms(Δ) = ρ`` unless G = 0.
    Invariant to the scale of G: ``spectral_update(c G) = spectral_update(G)``
    for c > 0.
    """
    return rms_normalise(spectral_direction(G, alpha, damping), rms)


def adamw_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *,
                 lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                 lr_scale: float = 1.0) -> None:
    """One AdamW step (Loshchilov & Hutter), in place, moments in :func:`state_dtype`.

    With ``g`` the gradient, ``t = step`` (≥ 1, this step's count) and
    ``η = lr · lr_scale``::

        m ← β₁ m + (1 − β₁) g,         v ← β₂ v + (1 − β₂) g²,
        w ← w (1 − η λ) − η · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε).

    The arithmetic is that of ``torch.optim.AdamW(foreach=False)``, so on
    float32 parameters both give the same numbers. ``exp_avg`` and
    ``exp_avg_sq`` have the parameter's shape and dtype ``state_dtype(param.dtype)``;
    a bfloat16 or float16 parameter is updated in float32 and rounded once.
    """
    beta1, beta2 = betas
    eta = lr * lr_scale
    dtype = state_dtype(param.dtype)
    w = param.to(dtype)
    g = grad.to(dtype)
    w.mul_(1.0 - eta * weight_decay)
    exp_avg.lerp_(g, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**step)).add_(eps)
    w.addcdiv_(exp_avg, denom, value=-eta / (1.0 - beta1**step))
    if w is not param:
        param.copy_(w)
