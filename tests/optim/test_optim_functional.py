"""The transfer function and the spectral step (curvprobe.optim.functional) on hand-built gradients.

- T's three limits: α = 0 moves along G, α = 1 along U Vᵀ, α = 2 along
  U diag(1/σ) Vᵀ (δ = 0), against matrices built from chosen U, σ, V — no SVD
  in the reference;
- T(0) = 0, the damping's peak, and the normalisation identity
  T(cσ; α, c^α δ) = c^{1−α} T(σ; α, δ);
- scale invariance and the RMS of the step; rank-deficient and zero gradients;
- convolution kernels as the (c_out, c_in·kh·kw) matrix F.unfold applies;
- the AdamW step against torch.optim.AdamW.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from curvprobe.optim import (
    ADAMW_RMS,
    adamw_update,
    matrix_view,
    spectral_direction,
    spectral_update,
    transfer,
)


def orthonormal(rows: int, cols: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return Q.to(dtype)


def hand_built(m: int = 7, n: int = 5, sigma=(3.0, 1.7, 0.9, 0.4, 0.15), seed: int = 0):
    """(G, U, σ, V) with G = U diag(σ) Vᵀ from chosen factors."""
    U, V = orthonormal(m, len(sigma), seed), orthonormal(n, len(sigma), seed + 1)
    s = torch.tensor(sigma, dtype=torch.float64)
    return (U * s) @ V.T, U, s, V


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x)


def direction_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a/‖a‖ − b/‖b‖‖: 0 when a and b point the same way."""
    return float(torch.linalg.vector_norm(unit(a.double()) - unit(b.double())))


@pytest.mark.parametrize(("alpha", "expected"), [
    (0.0, lambda U, s, V: (U * s) @ V.T),
    (1.0, lambda U, s, V: U @ V.T),
    (2.0, lambda U, s, V: (U / s) @ V.T),
])
def test_transfer_limits_on_hand_built_gradients(alpha, expected):
    G, U, s, V = hand_built()
    D = spectral_direction(G, alpha, 0.0)
    assert direction_error(D, expected(U, s, V)) < 1e-6
    # the same limits through the RMS-normalised step
    assert direction_error(spectral_update(G, alpha, 0.0), expected(U, s, V)) < 1e-6


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_transfer_limits_in_float32(alpha):
    G, U, s, V = hand_built()
    D = spectral_direction(G.float(), alpha, 0.0)
    assert D.dtype == torch.float32
    reference = {0.0: (U * s) @ V.T, 1.0: U @ V.T, 2.0: (U / s) @ V.T}[alpha]
    # float32 SVD: κ(G) = 20 amplifies eps ≈ 1.2e-7 in the 1/σ directions (measured 1.0e-6)
    assert direction_error(D, reference) < 5e-6


def test_damping_interpolates_and_peaks_where_stated():
    sigma_hat = torch.linspace(1e-3, 1.0, 20001, dtype=torch.float64)
    for alpha, damping in [(2.0, 1e-2), (1.5, 1e-3), (3.0, 0.1)]:
        T = transfer(sigma_hat, alpha, damping)
        peak = (damping / (alpha - 1.0)) ** (1.0 / alpha)
        assert float(sigma_hat[T.argmax()]) == pytest.approx(peak, abs=1e-4)
    # far below the knee the damped step is gradient descent's σ̂/δ
    small = torch.tensor([1e-6], dtype=torch.float64)
    assert float(transfer(small, 2.0, 1e-2)) == pytest.approx(1e-6 / 1e-2, rel=1e-9)


@pytest.mark.parametrize("damping", [0.0, 1e-2])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_transfer_is_zero_at_zero(alpha, damping):
    T = transfer(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), alpha, damping)
    assert float(T[0]) == 0.0
    assert torch.isfinite(T).all()
    assert float(T[2]) == pytest.approx(1.0 / (1.0 + damping))


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.7, 2.0])
def test_normalisation_is_a_per_layer_constant(alpha):
    # T(cσ̂; α, c^α δ) = c^{1−α} T(σ̂; α, δ): another normalisation of σ with δ
    # in its units changes the step by a constant, which the RMS removes
    sigma_hat = torch.tensor([1.0, 0.6, 0.2, 0.05], dtype=torch.float64)
    c, damping = 3.7, 1e-2
    lhs = transfer(c * sigma_hat, alpha, c**alpha * damping)
    assert torch.allclose(lhs, c ** (1 - alpha) * transfer(sigma_hat, alpha, damping), rtol=1e-12)


def test_step_is_invariant_to_the_gradient_scale_and_has_rms_rho():
    G, *_ = hand_built()
    for alpha in (0.0, 1.0, 2.0):
        step = spectral_update(G, alpha, 1e-2)
        rms = float(torch.linalg.vector_norm(step)) / math.sqrt(step.numel())
        assert rms == pytest.approx(ADAMW_RMS, rel=1e-12)
        for c in (1e-6, 0.3, 1e5):
            assert torch.allclose(spectral_update(c * G, alpha, 1e-2), step, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_rank_deficient_gradient_moves_only_in_its_range(alpha):
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 2, generator=gen, dtype=torch.float64), torch.randn(2, 9, generator=gen,
                                                                                dtype=torch.float64)
    G = a @ b  # rank 2
    D = spectral_direction(G, alpha, 0.0)
    assert torch.isfinite(D).all()
    U, S, Vh = torch.linalg.svd(G)
    U2, V2 = U[:, :2], Vh[:2].T
    expected = (U2 * S[:2] ** (1 - alpha)) @ V2.T
    assert direction_error(D, expected) < 1e-10
    # nothing outside the column and row spaces of G
    assert float(torch.linalg.matrix_norm(D - U2 @ U2.T @ D @ V2 @ V2.T)) < 1e-10
    assert int(torch.linalg.matrix_rank(D)) == 2


def test_zero_gradient_gives_a_zero_step():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        G = torch.zeros(4, 3, 3, 3, dtype=dtype)
        step = spectral_update(G, 2.0, 0.0)
        assert torch.equal(step, torch.zeros_like(step))


def test_conv_kernel_is_the_matrix_unfold_applies():
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    conv = F.conv2d(x, W, padding=1)
    patches = F.unfold(x, 3, padding=1)  # (B, c_in·kh·kw, positions)
    assert torch.allclose(conv.flatten(2), matrix_view(W) @ patches, atol=1e-12)
    # the conv step is the matrix step reshaped; α = 1, δ = 0 gives orthonormal rows
    G = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)
    D = spectral_direction(G, 1.0, 0.0)
    assert D.shape == G.shape
    assert torch.equal(D, spectral_direction(matrix_view(G), 1.0, 0.0).reshape(G.shape))
    M = matrix_view(D)
    assert torch.allclose(M @ M.T, torch.eye(6, dtype=torch.float64), atol=1e-12)


def test_matrix_view_refuses_vectors():
    with pytest.raises(ValueError, match="2 dimensions"):
        matrix_view(torch.zeros(5))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_update_matches_torch_adamw(weight_decay):
    gen = torch.Generator().manual_seed(7)
    ours = torch.randn(5, 4, generator=gen)
    theirs = torch.nn.Parameter(ours.clone())
    reference = torch.optim.AdamW([theirs], lr=3e-3, betas=(0.8, 0.99), eps=1e-6,
                                  weight_decay=weight_decay, foreach=False)
    m, v = torch.zeros_like(ours), torch.zeros_like(ours)
    for step in range(1, 6):
        g = torch.randn(5, 4, generator=gen)
        theirs.grad = g.clone()
        reference.step()
        adamw_update(ours, g, m, v, step, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    assert torch.allclose(ours, theirs.detach(), rtol=0, atol=1e-7)
