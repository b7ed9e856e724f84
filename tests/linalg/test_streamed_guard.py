"""The streamed guard of a float32 (memory-bound) solve: the stored guard's
bound while the run is orthogonal, the measured kernel vector when it is not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from linalg_cases import check_certified, random_symmetric, spectrum

import curvprobe.linalg.guard as guard_module
from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.core.operators import DeflatedOperator
from curvprobe.linalg import christoffel_kernel, miss_probability
from curvprobe.linalg._krylov import append_columns_, owned_buffer, random_unit, select_columns_
from curvprobe.linalg.guard import (
    REPAIR_SPARE,
    RoundedDeflatedOperator,
    _stored_guard_run,
    deflate,
    streamed_guard_run,
)


def deflated_case(n: int, top: list[float], bulk: tuple[float, float], seed: int
                  ) -> tuple[DeflatedOperator, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A`` with eigenvalues ``top`` and a bulk, deflated by its top two
    eigenvectors: the operator, its eigenvalues and eigenvectors (dense), and
    a random unit start ``⟂`` the deflated ones."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.cat([torch.tensor(top, dtype=torch.float64),
                     torch.linspace(*bulk, n - len(top), dtype=torch.float64)])
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    op = DeflatedOperator(MatrixOperator(Q @ torch.diag(lam) @ Q.T), Q[:, :2], 0.0)
    return op, lam, Q, random_unit(n, g, op.device, Q[:, :2])


@pytest.mark.parametrize("steps", [4, 10, 25])
@pytest.mark.parametrize("two_sided", [False, True])
def test_streamed_bound_is_the_stored_bound_while_the_run_is_orthogonal(steps, two_sided):
    """Few steps, no converged Ritz value: ``‖y_t‖² = K_j(t)`` and both
    guards report the same top, bottom and miss bound."""
    op, _, _, x0 = deflated_case(300, [10.0, 9.0, 6.0, 5.5], (0.0, 5.0), seed=1)
    levels = (-0.5 if two_sided else -math.inf, 6.1, 298)
    stored = _stored_guard_run(op, x0, steps, steps, 10.0, levels, None, torch.Generator().manual_seed(0))
    streamed = streamed_guard_run(op, x0, steps, steps, 10.0, levels, None)
    assert streamed.top == pytest.approx(stored.top, rel=1e-10)
    assert streamed.bottom == pytest.approx(stored.bottom, rel=1e-8, abs=1e-10)
    assert streamed.miss_probability == pytest.approx(stored.miss_probability, rel=1e-6)
    assert torch.allclose(streamed.T, stored.T.diagonal().diag() + stored.T.diagonal(1).diag(1)
                          + stored.T.diagonal(-1).diag(-1), rtol=1e-8, atol=1e-10)


def kernel_polynomial(T: torch.Tensor, t: float, s: torch.Tensor) -> torch.Tensor:
    """``k_t(s) = Σ_{i<j} p_i(t) p_i(s)`` for the polynomials of ``T``'s coefficients."""
    alpha, beta = T.diagonal().tolist(), T.diagonal(1).tolist()
    p_t, p_s = [1.0], [torch.ones_like(s)]
    for i, b in enumerate(beta):
        prev_t, prev_s = (p_t[-2], p_s[-2]) if i else (0.0, torch.zeros_like(s))
        p_t.append(((t - alpha[i]) * p_t[-1] - (beta[i - 1] if i else 0.0) * prev_t) / b)
        p_s.append(((s - alpha[i]) * p_s[-1] - (beta[i - 1] if i else 0.0) * prev_s) / b)
    return sum(a * b for a, b in zip(p_t, p_s, strict=True))


def test_streamed_bound_is_measured_when_orthogonality_is_lost():
    """An isolated top eigenvalue of the deflated operator converges in a few
    steps and, without reorthogonalisation, comes back as a ghost: ``T`` then
    has two Ritz values at it and ``K_j(t)`` alone would overstate what the
    start saw. The streamed bound is the norm of ``k_t(M) x_0``, computed
    here from the dense eigendecomposition: equal to it, and not ``1/K_j(t)``."""
    op, lam, Q, x0 = deflated_case(120, [10.0, 9.0, 4.0], (0.0, 1.0), seed=2)
    t = 4.0 + 1e-4
    run = streamed_guard_run(op, x0, 90, 90, 10.0, (-math.inf, t, 118), None)
    theta = torch.linalg.eigvalsh(run.T)
    assert int((theta > 4.0 - 1e-8).sum()) >= 2  # the ghost: orthogonality was lost
    weights = (Q[:, 2:].T @ x0) ** 2  # the start's spectral measure on the deflated range
    norm2 = float((weights * kernel_polynomial(run.T, t, lam[2:]) ** 2).sum())
    K = christoffel_kernel(run.T, t)
    assert run.miss_probability == pytest.approx(miss_probability(K * K / norm2, 118), rel=1e-6)
    assert abs(K * K / norm2 - K) > 0.01 * K  # the stored formula would be off


def test_float32_solve_repairs_a_second_copy_and_certifies():
    """A double top eigenvalue: a single Krylov sequence sees one copy; the
    streamed guard of a float32 solve finds the other, repairs it and
    certifies at the miss bound, against the dense spectrum."""
    rng = np.random.default_rng(3)
    lam = np.concatenate([[5.0, 5.0, 4.0, 3.5], rng.uniform(0.0, 3.0, 296)])
    A = random_symmetric(lam, rng)
    es = top_eigenspace(MatrixOperator(A), 4, tol=1e-6, basis_dtype=torch.float32, seed=0,
                        guard_steps=60, max_miss_probability=0.01)
    check_certified(es, A, 4, 1e-6)
    assert es.certified and es.miss_probability <= 0.01
    assert np.allclose(es.values.numpy(), [5.0, 5.0, 4.0, 3.5], atol=1e-6 * 5)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 0, 5, 3], [5, 4, 3, 2, 1, 0], [1]])
def test_columns_are_appended_and_selected_in_place(order):
    """A memory-bound solve's vectors sit in a buffer with free columns: a
    repair's pairs are written into them and the result's are selected on
    the same storage, row chunk by row chunk (here over several chunks),
    equal to plain indexing."""
    g = torch.Generator().manual_seed(0)
    X, Y = (torch.randn(200_000, w, generator=g, dtype=torch.float64) for w in (4, 2))
    view = owned_buffer(X, 2)
    wide = append_columns_(view, Y)
    expected = torch.cat([X, Y], dim=1)[:, order]
    chosen = select_columns_(wide, torch.tensor(order))
    assert torch.equal(chosen, expected) and chosen.is_contiguous()
    assert chosen.untyped_storage().data_ptr() == view.untyped_storage().data_ptr()


def test_float32_solve_merges_and_selects_without_copies(monkeypatch):
    """On a dense bulk the float32 solve skips an eigenvalue and the guard
    repairs it: the merge writes the float32 pairs into the free columns of
    the float32 buffer, and the result is certified in float64 on storage of
    exactly its D columns."""
    merges = []

    def counted(X, Y):
        merges.append((Y.shape[1], X.dtype, Y.dtype))
        return append_columns_(X, Y)

    monkeypatch.setattr(guard_module, "append_columns_", counted)
    rng = np.random.default_rng(0)
    A = random_symmetric(spectrum("bulk", 300, rng), rng)
    es = top_eigenspace(MatrixOperator(A), 20, tol=1e-3, basis_dtype=torch.float32, guard_steps=40,
                        max_miss_probability=0.05)
    assert es.certified and merges == [(REPAIR_SPARE, torch.float32, torch.float32)]
    assert es.vectors.dtype == torch.float64 and es.vectors.untyped_storage().nbytes() == 300 * 20 * 8
    check_certified(es, A, 20, 1e-3)


@pytest.mark.parametrize("shift", [0.0, 2.5])
def test_rounded_deflation_is_the_exact_projection(shift):
    """Found vectors stored in float32 (rounded, and far from orthonormal
    here) are deflated by the orthogonal projector onto the complement of
    their span, with the shift on the span: the dense ``P A P + c (I − P)``
    for ``P = I − V (VᵀV)⁻¹ Vᵀ`` of the float32 values themselves."""
    g = torch.Generator().manual_seed(3)
    n = 60
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = B + B.T
    V = (torch.randn(n, 4, generator=g, dtype=torch.float64) + 0.5).float()
    op = deflate(MatrixOperator(A), V, shift)
    assert isinstance(op, RoundedDeflatedOperator)
    V64 = V.double()
    P = torch.eye(n, dtype=torch.float64) - V64 @ torch.linalg.solve(V64.T @ V64, V64.T)
    expected = P @ A @ P + shift * (torch.eye(n, dtype=torch.float64) - P)
    dense = op.matmat(torch.eye(n, dtype=torch.float64))
    assert torch.allclose(dense, expected, rtol=0, atol=1e-12 * float(A.abs().max()))
    assert type(deflate(MatrixOperator(A), V64, shift)) is DeflatedOperator
