"""The curvature part Δ − Δ₁² and the captured fraction, against closed forms on quadratics."""

from __future__ import annotations

import warnings

import pytest
import torch
import xarray as xr

from curvprobe import stabilization, top_eigenspace
from curvprobe.criteria.decomposition import CURVATURE_VARIABLES, curvature_decomposition, estimates
from curvprobe.criteria.theory import gaussian_moment
from curvprobe.testing import QuadraticProblem

KS = [3, 7, 11]


def _exact(qp: QuadraticProblem, k: int, U: torch.Tensor, sigma: float) -> tuple[float, float]:
    """(a_k², GM in span(U)) from the exact per-sample quantities."""
    a_i, G, Hs = qp.a, qp.per_sample_gradients, qp.per_sample_hessians
    a = (a_i[k] - a_i[:k].mean()) / (k + 1)
    c = U.T @ (G[k] - G[:k].mean(0)) / (k + 1)
    B = U.T @ (Hs[k] - Hs[:k].mean(0)) @ U / (k + 1)
    return float(a**2), float(gaussian_moment(a, c, 0.5 * (B + B.T), sigma))


@pytest.fixture(scope="module")
def run():
    qp = QuadraticProblem.random(12, 6, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = stabilization(qp, KS, sigmas=[0.1, 1.0], dims=[1, 2], mc_samples=2000, subspace="fixed",
                           estimators=["delta1", "full_mc", "gm", "direct_mc", "cv_mc", "sphere"],
                           tol=1e-12, seed=5)
    return qp, ds


def test_curvature_part_and_captured_fraction_match_the_closed_forms(run):
    qp, ds = run
    U = top_eigenspace(qp.hessian_operator(max(KS)), 2, tol=1e-12).vectors
    I = torch.eye(qp.num_params, dtype=torch.float64)
    for sigma in (0.1, 1.0):
        for k in KS:
            a2, full = _exact(qp, k, I, sigma)
            cell = dict(k=k, sigma=sigma)
            got = float(ds["curvature_part"].sel(estimator="full_mc", dim=1, **cell))
            se = float(ds["curvature_part_stderr"].sel(estimator="full_mc", dim=1, **cell))
            assert se == float(ds["stderr"].sel(estimator="full_mc", dim=1, **cell))  # a_k is exact
            assert abs(got - (full - a2)) <= 4.5 * se
            assert float(ds["delta1_share"].sel(**cell)) == pytest.approx(
                a2 / float(ds["value"].sel(estimator="full_mc", dim=1, **cell)), rel=1e-12)
            for D in (1, 2):
                _, sub = _exact(qp, k, U[:, :D], sigma)
                gm_part = float(ds["curvature_part"].sel(estimator="gm", dim=D, **cell))
                assert gm_part == pytest.approx(sub - a2, rel=1e-7, abs=1e-14)
                assert float(ds["curvature_part_stderr"].sel(estimator="gm", dim=D, **cell)) == 0
                fraction = ds["captured_fraction"].sel(estimator="gm", dim=D, **cell)
                fse = float(ds["captured_fraction_stderr"].sel(estimator="gm", dim=D, **cell))
                exact = (sub - a2) / (full - a2)
                assert abs(float(fraction) - exact) <= 4.5 * fse + 1e-12
                # gm has no variance: the error is the full-space curvature part's, relative
                assert fse == pytest.approx(abs(float(fraction)) * se / abs(got), rel=1e-9)


def test_undefined_cells_are_nan_and_full_mc_captures_all(run):
    _, ds = run
    for name in CURVATURE_VARIABLES:
        assert name in ds, name
    assert ds["curvature_part"].sel(estimator=["delta1", "sphere"]).isnull().all()
    assert ds["captured_fraction"].sel(estimator=["delta1", "sphere", "full_mc"]).isnull().all()
    assert ds["captured_fraction"].sel(estimator=["gm", "direct_mc", "cv_mc"]).notnull().all()
    assert ds["curvature_part"].attrs["units"] == "loss^2"


def test_the_plain_ratio_is_uninformative_when_delta1_dominates(run):
    """σ = 0.1, k = 7, D = 1: Δ₂^(D)/Δ₂ ≈ 0.97, yet the subspace holds ~15 % of Δ₂ − Δ₁²."""
    _, ds = run
    cell = dict(k=7, sigma=0.1, dim=1)
    value, _ = estimates(ds)
    ratio = float(value.sel(estimator="gm", **cell) / value.sel(estimator="full_mc", **cell))
    fraction = float(ds["captured_fraction"].sel(estimator="gm", **cell))
    fse = float(ds["captured_fraction_stderr"].sel(estimator="gm", **cell))
    assert float(ds["delta1_share"].sel(k=7, sigma=0.1)) > 0.9
    assert ratio > 0.95
    assert fraction < 0.5 and (1 - fraction) > 10 * fse
    assert bool(ds["curvature_resolved"].sel(k=7, sigma=0.1))


def test_other_orders_and_results_without_a_are_left_alone():
    qp = QuadraticProblem.random(8, 4, seed=2)
    ds = stabilization(qp, [2, 5], sigmas=[0.3], dims=[1], mc_samples=8, p=1,
                       estimators=["delta1", "full_mc", "direct_mc"])
    assert not any(name in ds for name in CURVATURE_VARIABLES)
    plain = xr.Dataset({"value": ("k", [1.0])})
    assert curvature_decomposition(plain) is plain
