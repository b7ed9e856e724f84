"""Averages over sample orderings: permutations, the crossed standard error, the sweep."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from curvprobe import stabilization
from curvprobe.criteria.engine import (
    increments,
    ordering_mean_stderr,
    orderings,
    permuted_increments,
)
from curvprobe.criteria.spec import StabilizationSpec
from curvprobe.criteria.sweep import part_names
from curvprobe.testing import QuadraticProblem

from conftest import mlp_problem

ESTIMATORS = ["delta1", "full_mc", "direct_mc", "quad_mc", "gm", "cv_mc", "sphere"]


def test_orderings_identity_first_keyed_and_extendable():
    p = orderings(6, 30, seed=4)
    assert p.shape == (6, 30) and p.dtype == torch.long
    assert torch.equal(p[0], torch.arange(30))
    for row in p:
        assert torch.equal(row.sort().values, torch.arange(30))
    assert len({tuple(row.tolist()) for row in p}) == 6
    assert torch.equal(orderings(3, 30, seed=4), p[:3])  # ordering r does not depend on R
    assert not torch.equal(orderings(3, 30, seed=5)[1], p[1])
    with pytest.raises(ValueError, match="count"):
        orderings(0, 30)


def test_permuted_increments_are_increments_of_the_reordered_losses():
    losses = torch.randn(5, 12, dtype=torch.float64)
    perms = orderings(4, 10, seed=1)  # reorders the first 10 of 12 samples
    ks = [1, 4, 9]
    out = permuted_increments(losses, perms, ks)
    assert out.shape == (4, 5, 3)
    for r, perm in enumerate(perms):
        assert torch.equal(out[r], increments(losses[:, perm], ks))
    assert torch.equal(out[0], increments(losses, ks))


def test_crossed_standard_error_is_calibrated_and_conservative():
    """f_rs = α_r + β_s + γ_rs: the se² of the ordering mean against its true variance."""
    gen = torch.Generator().manual_seed(0)
    R, S, trials = 12, 20, 3000
    sa, sb, sg = 1.0, 2.0, 1.5
    f = (sa * torch.randn(trials, R, 1, generator=gen, dtype=torch.float64)
         + sb * torch.randn(trials, 1, S, generator=gen, dtype=torch.float64)
         + sg * torch.randn(trials, R, S, generator=gen, dtype=torch.float64))
    values = f.mean(2)
    means, se2 = [], []
    for t in range(trials):
        m, se, mc = ordering_mean_stderr(values[t], f[t])
        assert se >= mc
        means.append(float(m))
        se2.append(float(se) ** 2)
    true = sa**2 / R + sb**2 / S + sg**2 / (R * S)
    assert np.var(means) == pytest.approx(true, rel=0.08)
    expected = true + sg**2 / (R * S)  # conservative by the interaction term
    assert np.mean(se2) == pytest.approx(expected, rel=0.05)
    # without integrands: the standard error of the mean of R values
    v = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    m, se, mc = ordering_mean_stderr(v, None)
    assert float(m) == pytest.approx(7 / 3) and float(mc) == 0
    assert float(se) == pytest.approx(float(v.std()) / np.sqrt(3))


def test_spec_orderings_need_the_pooled_subspace():
    assert StabilizationSpec(ks=(2,), sigmas=(1.0,)).subspace == "per_k"
    assert StabilizationSpec(ks=(2,), sigmas=(1.0,), orderings=4).subspace == "pooled"
    with pytest.raises(ValueError, match="pooled"):
        StabilizationSpec(ks=(2,), sigmas=(1.0,), orderings=4, subspace="per_k")
    # full-space estimators alone do not need an eigenspace
    StabilizationSpec(ks=(2,), sigmas=(1.0,), orderings=4, subspace="per_k", estimators=("full_mc",))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="orderings"):
            StabilizationSpec(ks=(2,), sigmas=(1.0,), orderings=bad)
    spec = StabilizationSpec(ks=(2, 3), sigmas=(1.0,), orderings=3)
    assert part_names(spec) == ["fullspace", "subspace_pooled"]
    assert spec.attrs()["orderings"] == 3
    assert "orderings" not in StabilizationSpec(ks=(2,), sigmas=(1.0,)).attrs()


def _run(problem, R, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return stabilization(problem, [2, 5, 9], sigmas=[0.3], dims=[1, 3], mc_samples=24,
                             estimators=ESTIMATORS, orderings=R, tol=1e-10, seed=2, **kw)


@pytest.fixture(scope="module")
def quadratic():
    qp = QuadraticProblem.random(12, 5, seed=3)
    return qp, _run(qp, 6, ordering_seed=7)


def test_every_ordering_is_the_measurement_on_the_reordered_samples(quadratic):
    qp, ds = quadratic
    perms = ds["permutation"].values
    assert ds["value"].dims[-1] == "ordering" and ds.sizes["ordering"] == 6
    np.testing.assert_array_equal(perms, orderings(6, 10, seed=7).numpy())
    for r in (0, 3, 5):
        idx = torch.as_tensor(np.concatenate([perms[r], np.arange(10, 12)]))
        other = QuadraticProblem(qp.a[idx], qp.per_sample_gradients[idx], qp.per_sample_hessians[idx])
        ref = _run(other, 1, subspace="pooled")
        got = ds["value"].sel(ordering=r)
        for name in ("delta1", "full_mc", "sphere", "gm"):  # gm: invariant to eigenvector signs
            np.testing.assert_allclose(got.sel(estimator=name), ref["value"].sel(estimator=name),
                                       rtol=1e-8, atol=1e-13, err_msg=f"ordering {r}, {name}")
        np.testing.assert_allclose(ds["a"].sel(ordering=r), ref["a"], rtol=1e-12, atol=1e-15)


def test_ordering_zero_is_the_single_ordering_run_and_averages_are_means(quadratic):
    qp, ds = quadratic
    one = _run(qp, 1, subspace="pooled")
    xr.testing.assert_equal(ds["value"].sel(ordering=0, drop=True), one["value"])
    xr.testing.assert_equal(ds["stderr"].sel(ordering=0, drop=True), one["stderr"])
    xr.testing.assert_allclose(ds["ordering_mean"], ds["value"].mean("ordering"))
    assert bool((ds["ordering_stderr"] >= ds["ordering_mc_stderr"] - 1e-15).all())
    spread = ds["value"].std("ordering", ddof=1) / np.sqrt(6)
    assert bool((ds["ordering_stderr"] >= spread - 1e-15).all())
    assert "ordering" not in one.dims and "ordering_mean" not in one


def test_ordering_average_is_unbiased_on_quadratics(quadratic):
    """Exact per-ordering criteria (dense formulas) against the estimates, within 4.5 se."""
    qp, ds = quadratic
    perms = ds["permutation"].values
    sigma = 0.3
    from curvprobe.criteria.theory import gaussian_moment

    a_i, G, Hs = qp.a, qp.per_sample_gradients, qp.per_sample_hessians
    exact = []
    for perm in perms:
        idx = torch.as_tensor(perm)
        row = []
        for k in ds["k"].values:
            a = (a_i[idx][k] - a_i[idx][:k].mean()) / (k + 1)
            c = (G[idx][k] - G[idx][:k].mean(0)) / (k + 1)
            B = (Hs[idx][k] - Hs[idx][:k].mean(0)) / (k + 1)
            row.append(float(gaussian_moment(a, c, 0.5 * (B + B.T), sigma)))
        exact.append(row)
    exact_mean = np.mean(exact, axis=0)
    got = ds["ordering_mean"].sel(estimator="full_mc", sigma=sigma, dim=1).values
    se = ds["ordering_stderr"].sel(estimator="full_mc", sigma=sigma, dim=1).values
    assert (np.abs(got - exact_mean) <= 4.5 * se).all()
    # the ordering average of the closed-form curvature part, and its standard error's spread term
    a2 = (ds["a"] ** 2).mean("ordering").values
    curv = ds["curvature_part"].sel(estimator="full_mc", sigma=sigma, dim=1).values
    assert (np.abs(curv - (exact_mean - a2)) <= 4.5 * se).all()


def test_delta1_and_full_mc_cost_no_extra_forwards():
    problem = mlp_problem(n=40)
    counts = []
    for R in (1, 16):
        calls = {"points": 0}
        original = problem.per_sample_losses_at

        def counting(W, *args, original=original, calls=calls, **kwargs):
            calls["points"] += W.shape[0]
            return original(W, *args, **kwargs)

        problem.per_sample_losses_at = counting  # type: ignore[method-assign]
        try:
            ds = stabilization(problem, [4, 8, 16, 32], sigmas=[1e-2], dims=[1], mc_samples=8,
                               estimators=["delta1", "full_mc"], orderings=R)
        finally:
            del problem.per_sample_losses_at
        counts.append(calls["points"])
        assert np.isfinite(ds["value"]).all()
    assert counts[0] == counts[1] == 8


def test_orderings_smooth_the_k_curve_of_delta1():
    """One ordering's |a_k| swings with which sample is k+1; the average over orderings does
    not: its log-log curve has a far smaller second difference."""
    problem = mlp_problem(n=80)
    ks = [4, 6, 8, 11, 16, 22, 32, 45, 64]
    ds = stabilization(problem, ks, sigmas=[1e-2], dims=[1], estimators=["delta1"], orderings=64)
    one = np.log(ds["value"].sel(ordering=0, sigma=1e-2, dim=1, estimator="delta1").values ** 2)
    avg = np.log(ds["ordering_mean"].sel(sigma=1e-2, dim=1, estimator="delta1").values ** 2)
    assert np.abs(np.diff(avg, 2)).mean() < 0.5 * np.abs(np.diff(one, 2)).mean()
