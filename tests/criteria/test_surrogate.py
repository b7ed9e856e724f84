"""QuadraticSurrogate, Estimate and the testing module's QuadraticProblem and
strategies: MC against the closed form, derivatives against formulas, dense
ground truth for the Problem, and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curvprobe import Problem
from curvprobe.core.problem import HVP_MODES
from curvprobe.criteria.surrogate import Estimate, QuadraticSurrogate
from curvprobe.testing import (
    SPECTRUM_KINDS,
    QuadraticProblem,
    quadratic_problems,
    sigmas,
    spectra,
    symmetric_matrices,
)

FAST = settings(max_examples=25, deadline=None)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm()) if float(b.norm()) > 0 else float(a.norm())


def random_surrogate(D: int = 3, sigma: float = 0.7, seed: int = 0) -> QuadraticSurrogate:
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(D, D, generator=gen, dtype=torch.float64)
    return QuadraticSurrogate(torch.randn((), generator=gen, dtype=torch.float64),
                              torch.randn(D, generator=gen, dtype=torch.float64), M + M.T, sigma)


def exact_surrogate(qp: QuadraticProblem, k: int, D: int, sigma: float) -> QuadraticSurrogate:
    a, G, Hs = qp.a, qp.per_sample_gradients, qp.per_sample_hessians
    H = qp.dense_hessian(k)
    U = torch.from_numpy(np.linalg.eigh(H.numpy())[1][:, ::-1][:, :D].copy())
    return QuadraticSurrogate.from_derivatives(a[k], a[:k].mean(), U.T @ G[k], U.T @ qp.dense_gradient(k),
                                               U.T @ Hs[k] @ U, U.T @ H @ U, k, sigma)


# ------------------------------------------------------------------ Estimate
def test_estimate_from_samples():
    x = np.random.default_rng(0).standard_normal(50)
    est = Estimate.from_samples(torch.from_numpy(x))
    assert est.mean == pytest.approx(x.mean(), rel=1e-14)
    assert est.stderr == pytest.approx(x.std(ddof=1) / math.sqrt(50), rel=1e-14)
    assert est.mc_samples == 50
    assert Estimate.from_samples([1.0, 3.0]) == Estimate(2.0, 1.0, 2)


@pytest.mark.parametrize("bad", [[], [1.0]])
def test_estimate_needs_two_samples(bad):
    with pytest.raises(ValueError, match="needs >= 2 samples"):
        Estimate.from_samples(bad)


def test_estimate_rejects_bad_samples():
    with pytest.raises(ValueError, match="1-D"):
        Estimate.from_samples(np.ones((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        Estimate.from_samples([1.0, math.nan, 2.0])


# --------------------------------------------------------- surrogate basics
def test_call_matches_explicit_formula_and_broadcasts():
    s = random_surrogate(D=4)
    z = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = s(z)
    assert got.shape == (2, 5) and got.dtype == torch.float64
    for i in range(2):
        for j in range(5):
            v = z[i, j]
            ref = s.a + torch.dot(s.c, v) + 0.5 * torch.dot(v, s.B @ v)
            assert float(got[i, j]) == pytest.approx(float(ref), rel=1e-13, abs=1e-13)
    assert s.D == 4 and s(z[0, 0]).shape == ()
    with pytest.raises(ValueError, match="z must"):
        s(torch.zeros(3))


def test_gm_by_hand():
    B = torch.tensor([[2.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    s = QuadraticSurrogate(torch.tensor(0.5), torch.tensor([1.0, -2.0]), B, 0.5)
    s2 = 0.25
    tr, tr2 = 1.0, 4 + 1 + 1 + 1
    ref = 0.25 + 0.5 * s2 * tr + s2 * 5 + s2**2 / 4 * (2 * tr2 + tr**2)
    assert float(s.gm()) == pytest.approx(ref, rel=1e-15)


def test_quad_mc_constant_surrogate_and_p():
    s = QuadraticSurrogate(-1.5, torch.zeros(2), torch.zeros(2, 2), 0.3)
    for p in (1, 2, 3.5):
        est = s.quad_mc(10, torch.Generator().manual_seed(0), p=p)
        assert est.mean == pytest.approx(1.5**p, rel=1e-15) and est.stderr == 0.0


def test_quad_mc_is_reproducible_and_uses_sample_z():
    s = random_surrogate()
    e1 = s.quad_mc(1000, torch.Generator().manual_seed(5))
    e2 = s.quad_mc(1000, torch.Generator().manual_seed(5))
    assert e1 == e2
    z = s.sample_z(1000, torch.Generator().manual_seed(5))
    assert e1.mean == pytest.approx(float((s(z) ** 2).mean()), rel=1e-14)
    anti = s.quad_mc(1000, torch.Generator().manual_seed(5), antithetic=True)
    z = s.sample_z(500, torch.Generator().manual_seed(5))
    assert anti.mc_samples == 1000
    assert anti.mean == pytest.approx(float(torch.cat([s(z), s(-z)]).pow(2).mean()), rel=1e-14)


@FAST
@given(quadratic_problems(min_samples=2, max_samples=10, max_dim=5), sigmas(1e-3, 2.0), st.data())
def test_quad_mc_agrees_with_gm(qp, sigma, data):
    D = data.draw(st.integers(1, qp.num_params))
    k = data.draw(st.integers(1, qp.num_samples - 1))
    s = exact_surrogate(qp, k, D, sigma)
    gm = float(s.gm())
    for antithetic in (False, True):
        est = s.quad_mc(20_000, torch.Generator().manual_seed(k), antithetic=antithetic)
        assert est.mc_samples == 20_000
        assert abs(est.mean - gm) <= 4.5 * est.stderr + 1e-12 * gm, (antithetic, est, gm)


def test_quad_mc_rejects_bad_arguments():
    s = random_surrogate()
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=">= 2"):
        s.quad_mc(1, gen)
    with pytest.raises(ValueError, match="even"):
        s.quad_mc(11, gen, antithetic=True)
    with pytest.raises(ValueError, match="p must"):
        s.quad_mc(10, gen, p=0.5)


# ---------------------------------------------------------- from_derivatives
def test_from_derivatives_matches_formulas():
    gen = torch.Generator().manual_seed(2)
    D, k = 3, 7
    gn, gm = (torch.randn(D, generator=gen, dtype=torch.float64) for _ in range(2))
    M1, M2 = (torch.randn(D, D, generator=gen, dtype=torch.float64) for _ in range(2))
    Hn, T = M1 + M1.T, M2 + M2.T
    s = QuadraticSurrogate.from_derivatives(2.5, 1.0, gn, gm, Hn, T, k, 0.3)
    assert float(s.a) == pytest.approx(1.5 / 8, rel=1e-15)
    torch.testing.assert_close(s.c, (gn - gm) / 8, rtol=1e-15, atol=0)
    torch.testing.assert_close(s.B, (Hn - T) / 8, rtol=1e-15, atol=0)
    assert s.sigma == 0.3
    # HVP round-off asymmetry is symmetrised away; a non-symmetric matrix is refused
    s2 = QuadraticSurrogate.from_derivatives(2.5, 1.0, gn, gm, Hn + 1e-9 * M1, T, k, 0.3)
    assert torch.equal(s2.B, s2.B.T)
    with pytest.raises(ValueError, match="hess_next_proj must be symmetric"):
        QuadraticSurrogate.from_derivatives(2.5, 1.0, gn, gm, M1, T, k, 0.3)
    with pytest.raises(ValueError, match="k must"):
        QuadraticSurrogate.from_derivatives(2.5, 1.0, gn, gm, Hn, T, 0, 0.3)
    with pytest.raises(ValueError, match="ritz_matrix must be"):
        QuadraticSurrogate.from_derivatives(2.5, 1.0, gn, gm, Hn, T[:2, :2], k, 0.3)


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("sigma", [0.0, -0.1, math.nan, math.inf])
def test_surrogate_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        QuadraticSurrogate(0.0, torch.zeros(2), torch.eye(2), sigma)


def test_surrogate_rejects_bad_coefficients():
    with pytest.raises(ValueError, match="symmetric"):
        QuadraticSurrogate(0.0, torch.zeros(2), torch.tensor([[1.0, 1e-3], [0.0, 1.0]]), 0.5)
    with pytest.raises(ValueError, match="B must have shape"):
        QuadraticSurrogate(0.0, torch.zeros(2), torch.eye(3), 0.5)
    with pytest.raises(ValueError, match="c must"):
        QuadraticSurrogate(0.0, torch.zeros(2, 1), torch.eye(2), 0.5)
    with pytest.raises(ValueError, match="a must"):
        QuadraticSurrogate(torch.zeros(2), torch.zeros(2), torch.eye(2), 0.5)
    for a, c, B in [(math.nan, torch.zeros(2), torch.eye(2)),
                    (0.0, torch.tensor([0.0, math.inf]), torch.eye(2)),
                    (0.0, torch.zeros(2), torch.full((2, 2), math.nan))]:
        with pytest.raises(ValueError, match="finite"):
            QuadraticSurrogate(a, c, B, 0.5)


# --------------------------------------------------------- QuadraticProblem
@FAST
@given(quadratic_problems(max_samples=9, max_dim=6), st.data())
def test_quadratic_problem_hvps_equal_dense_hessian(qp, data):
    assert isinstance(qp, Problem)
    n, N = qp.num_samples, qp.num_params
    start = data.draw(st.integers(0, n - 1))
    k = data.draw(st.integers(start + 1, n))
    V = torch.randn(N, 5, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    H_ref = qp.per_sample_hessians[start:k].mean(0)  # the definition, not dense_hessian
    torch.testing.assert_close(qp.dense_hessian(k, start), H_ref, rtol=1e-14, atol=0)
    for mode in HVP_MODES:
        assert rel_err(qp.hvp(V, k, start=start, mode=mode), H_ref @ V) <= 1e-12
        assert rel_err(qp.hvp(V[:, 0], k, start=start, mode=mode), H_ref @ V[:, 0]) <= 1e-12
    w = qp.params + torch.randn(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(qp.hvp(V, k, w, start=start), H_ref @ V) <= 1e-12  # constant Hessian


@FAST
@given(quadratic_problems(max_samples=9, max_dim=6))
def test_quadratic_problem_losses_and_gradients_equal_formula(qp):
    a, G, Hs, ws = qp.a, qp.per_sample_gradients, qp.per_sample_hessians, qp.w_star
    assert torch.equal(qp.params, ws)
    torch.testing.assert_close(qp.per_sample_losses(), a, rtol=1e-15, atol=0)
    w = ws + torch.randn(qp.num_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = (w - ws).numpy()
    ref = np.array([a[i].item() + G[i].numpy() @ d + 0.5 * d @ Hs[i].numpy() @ d
                    for i in range(qp.num_samples)])
    np.testing.assert_allclose(qp.per_sample_losses(w).numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(qp.dense_losses(w).numpy(), ref, rtol=1e-12, atol=1e-12)
    n = qp.num_samples
    g_ref = np.mean([G[i].numpy() + Hs[i].numpy() @ d for i in range(n)], axis=0)
    np.testing.assert_allclose(qp.gradient(w).numpy(), g_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(qp.dense_gradient(w=w).numpy(), g_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(qp.gradient(k=1).numpy(), G[0].numpy(), rtol=1e-13, atol=1e-15)


def test_random_stationary_and_least_squares_closed_forms():
    qp = QuadraticProblem.random(11, 4, seed=3, stationary=True)
    assert float(qp.gradient().norm()) < 1e-14
    assert float(QuadraticProblem.random(11, 4, seed=3).gradient().norm()) > 1e-3
    qs = QuadraticProblem.random(11, 4, seed=3, spectrum=[3.0, 2.0, 1.0, -1.0], noise=0.0)
    np.testing.assert_allclose(np.linalg.eigvalsh(qs.dense_hessian().numpy()), [-1, 1, 2, 3], atol=1e-13)

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 3)), rng.standard_normal(30)
    ls = QuadraticProblem.least_squares(X, y)
    Xt, yt, w = torch.from_numpy(X), torch.from_numpy(y), ls.params
    assert float(ls.gradient().norm()) < 1e-12  # the minimiser over all samples
    for k in (1, 7, 30):
        torch.testing.assert_close(ls.dense_hessian(k), Xt[:k].T @ Xt[:k] / k, rtol=1e-13, atol=1e-14)
        assert rel_err(ls.hvp(torch.eye(3, dtype=torch.float64), k), Xt[:k].T @ Xt[:k] / k) <= 1e-12
    v = w + 0.3
    torch.testing.assert_close(ls.per_sample_losses(v), 0.5 * (Xt @ v - yt) ** 2, rtol=1e-12, atol=1e-14)
    w0 = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    lp = QuadraticProblem.least_squares(X, y, w0)
    torch.testing.assert_close(lp.gradient(k=10), Xt[:10].T @ (Xt[:10] @ w0 - yt[:10]) / 10,
                               rtol=1e-12, atol=1e-14)


def test_quadratic_problem_rejects_bad_input():
    with pytest.raises(ValueError, match="symmetric"):
        QuadraticProblem(np.zeros(2), np.zeros((2, 2)), np.array([[[1, 1], [0, 1]]] * 2))
    with pytest.raises(ValueError, match="Hs must have shape"):
        QuadraticProblem(np.zeros(2), np.zeros((2, 3)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="finite"):
        QuadraticProblem(np.zeros(2), np.full((2, 2), np.nan), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="spectrum"):
        QuadraticProblem.random(3, 2, seed=0, spectrum=[1.0])


# -------------------------------------------------------------- strategies
@FAST
@given(st.data())
def test_spectra_kinds_and_symmetric_matrices(data):
    kind = data.draw(st.sampled_from(SPECTRUM_KINDS))
    lam = data.draw(spectra(2, 9, kinds=(kind,)))
    assert lam.dtype == np.float64 and lam.ndim == 1 and 2 <= lam.size <= 9
    assert np.all(np.diff(lam) <= 0) and np.isfinite(lam).all()
    if kind == "spread":
        assert lam.min() > 0
    if kind == "degenerate":
        assert np.unique(lam).size < lam.size
    if kind == "negative":
        assert lam.min() < 0 and abs(lam.min()) == np.abs(lam).max()
    if kind == "bulk":
        bulk = lam[lam <= lam.min() / 0.9 * (1 + 1e-12)]
        assert bulk.size >= lam.size - 2
    A, ref = data.draw(symmetric_matrices(st.just(lam), return_spectrum=True))
    assert np.array_equal(A, A.T) and ref is lam
    np.testing.assert_allclose(np.linalg.eigvalsh(A)[::-1], lam, atol=1e-12 * np.abs(lam).max())


@FAST
@given(sigmas(1e-3, 0.5))
def test_sigmas_in_range(s):
    assert 1e-3 <= s <= 0.5
