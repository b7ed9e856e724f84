"""gm_full: the full-space Gaussian moment with tr B_k and ‖B_k‖²_F by Hutch++,
against the dense closed form on exactly quadratic problems, with calibrated
standard errors, and next to full_mc."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import curvprobe
from curvprobe.criteria import engine
from curvprobe.criteria.spec import NOISE_STREAMS, StabilizationSpec
from curvprobe.criteria.theory import gaussian_moment
from curvprobe.testing import QuadraticProblem


def dense_gm(qp: QuadraticProblem, k: int, sigma: float) -> float:
    """E q_k(ε)², ε ~ N(0, σ² I_N), from the dense per-sample derivatives."""
    a, G, Hs = qp.a, qp.per_sample_gradients, qp.per_sample_hessians
    a_k = (a[k] - a[:k].mean()) / (k + 1)
    c = (G[k] - G[:k].mean(dim=0)) / (k + 1)
    B = (Hs[k] - Hs[:k].mean(dim=0)) / (k + 1)
    return float(gaussian_moment(a_k, c, 0.5 * (B + B.T), sigma))


def test_moments_match_the_dense_hessian_difference():
    qp = QuadraticProblem.random(10, 24, seed=0)
    Hs = qp.per_sample_hessians
    k = 6
    B = (Hs[k] - Hs[:k].mean(dim=0)) / (k + 1)
    op = engine.HessianDifference(qp, k)
    V = torch.randn(24, 3, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), B @ V, atol=1e-13)
    exact = engine.full_space_moments(qp, k, 3 * 24, seed=0, stream=NOISE_STREAMS["gm_full"])
    assert exact.trace == pytest.approx(float(torch.trace(B)), rel=1e-10, abs=1e-12)
    assert exact.frobenius == pytest.approx(float((B * B).sum()), rel=1e-10)
    G = qp.per_sample_gradients
    assert exact.c_norm2 == pytest.approx(float(((G[k] - G[:k].mean(dim=0)) / (k + 1)).square().sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gm_full_agrees_with_the_dense_closed_form_within_its_standard_error(seed):
    """The issue's check on exactly quadratic problems: |gm_full − dense GM| ≤ 3 SE
    at every (k, σ), and exact (SE 0) once Hutch++ spans the space."""
    qp = QuadraticProblem.random(16, 40, seed=seed)
    ks, sigmas = [3, 8, 15], [0.05, 0.3, 1.0]
    ds = curvprobe.stabilization(qp, ks, sigmas=sigmas, estimators=["gm_full"], mc_samples=60, seed=seed)
    for k in ks:
        for sigma in sigmas:
            cell = dict(estimator="gm_full", k=k, sigma=sigma)
            value, se = float(ds["value"].sel(**cell).max()), float(ds["stderr"].sel(**cell).max())
            ref = dense_gm(qp, k, sigma)
            assert se > 0 and abs(value - ref) <= 3 * se + 1e-14 * abs(ref), (k, sigma, value, ref, se)
    full = curvprobe.stabilization(qp, ks, sigmas=sigmas, estimators=["gm_full"], mc_samples=3 * 40)
    for k in ks:
        for sigma in sigmas:
            cell = dict(estimator="gm_full", k=k, sigma=sigma)
            assert float(full["value"].sel(**cell).max()) == pytest.approx(dense_gm(qp, k, sigma), rel=1e-9)
            assert float(full["stderr"].sel(**cell).max()) < 1e-12 * dense_gm(qp, k, sigma)


def test_unbiased_with_calibrated_standard_errors():
    """Over 100 seeds the mean lies within 3 of its standard errors of the dense
    GM (unbiased: exact parts given Q, (tr B)² debiased), and about 95 % of the
    z-scores lie within ±2 (the f_i are skewed, so with few probes the
    coverage is a little below nominal)."""
    qp = QuadraticProblem.random(12, 30, seed=5)
    k, a = 9, float((qp.a[9] - qp.a[:9].mean()) / 10)
    for sigma in (0.3, 1.0):
        ref = dense_gm(qp, k, sigma)
        runs = [engine.estimate(engine.gm_full(engine.full_space_moments(
            qp, k, 30, seed=seed, stream=NOISE_STREAMS["gm_full"]), a, sigma)) for seed in range(100)]
        values, errors = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
        assert abs(values.mean() - ref) <= 3 * values.std() / np.sqrt(len(runs))
        assert np.mean(np.abs(values - ref) <= 2 * errors) >= 0.85
        assert np.sqrt(np.mean(errors**2)) == pytest.approx(values.std(), rel=0.3)


def test_gm_full_next_to_full_mc_on_a_quadratic():
    """On a quadratic the surrogate is exact: full_mc estimates the same moment."""
    qp = QuadraticProblem.random(12, 20, seed=3)
    ds = curvprobe.stabilization(qp, [5, 11], sigmas=[0.5], estimators=["full_mc", "gm_full"], mc_samples=400)
    for k in (5, 11):
        mc, gm = (ds.sel(k=k, sigma=0.5, estimator=e).max(dim="dim") for e in ("full_mc", "gm_full"))
        gap = abs(float(mc["value"]) - float(gm["value"]))
        assert gap <= 3 * float(np.hypot(mc["stderr"], gm["stderr"]))


def test_spec_refuses_gm_full_where_undefined():
    with pytest.raises(ValueError, match="p = 2"):
        StabilizationSpec(ks=(3,), sigmas=(0.1,), estimators=("gm_full",), p=3)
    with pytest.raises(ValueError, match="gm_full estimates one ordering"):
        StabilizationSpec(ks=(3,), sigmas=(0.1,), estimators=("gm_full", "full_mc"), orderings=2)
    assert "gm_full" not in curvprobe.criteria.spec.DEFAULT_ESTIMATORS
