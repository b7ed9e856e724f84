"""Stabilization criteria on synthetic quadratics (exact answers) and small models."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import curvprobe
from curvprobe import stabilization
from curvprobe.criteria.spec import ESTIMATORS
from curvprobe.criteria.theory import gaussian_moment, rate_bound
from curvprobe.results import without_volatile
from curvprobe.testing import QuadraticProblem, quadratic_problems, sigmas

from conftest import gpt_problem, mlp_problem

ALL = ESTIMATORS


def dense_coefficients(qp: QuadraticProblem, k: int, U: torch.Tensor):
    """a_k, c_k, B_k from the problem's exact per-sample quantities (1-based k)."""
    a_i, G, Hs = qp.a, qp.per_sample_gradients, qp.per_sample_hessians
    a = (a_i[k] - a_i[:k].mean()) / (k + 1)
    c = U.T @ (G[k] - G[:k].mean(0)) / (k + 1)
    B = U.T @ (Hs[k] - Hs[:k].mean(0)) @ U / (k + 1)
    return a, c, 0.5 * (B + B.T)


def grid(n: int) -> list[int]:
    return sorted({1, max(1, n // 3), n - 1})


@given(qp=quadratic_problems(min_samples=4, max_samples=10, min_dim=3, max_dim=6),
       sigma=sigmas(1e-2, 1.0), subspace=st.sampled_from(["per_k", "fixed"]))
# derandomized: 180 comparisons at 4.5 standard errors of heavy-tailed (quartic
# in z) estimates fail now and then on a random draw (found: N = 6, n = 7,
# σ = 1, 4.8 standard errors); CI must not depend on drawing one
@settings(max_examples=15, derandomize=True)
def test_estimators_exact_on_quadratics(qp, sigma, subspace):
    ks = grid(qp.num_samples)
    D = qp.num_params - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = stabilization(qp, ks, sigmas=[sigma], dims=[1, D], estimators=ALL, mc_samples=400,
                           subspace=subspace, tol=1e-10, seed=3)
    v = ds["value"].sel(sigma=sigma)
    se = ds["stderr"].sel(sigma=sigma)
    losses = qp.dense_losses()
    for _j, k in enumerate(ks):
        a_exact = (losses[k] - losses[:k].mean()) / (k + 1)
        assert math.isclose(float(v.sel(k=k, dim=1, estimator="delta1")), abs(float(a_exact)),
                            rel_tol=1e-12, abs_tol=1e-15)
        for D_ in (1, D):
            gm = float(v.sel(k=k, dim=D_, estimator="gm"))
            scale = max(abs(gm), 1e-12)
            # a quadratic surrogate is exact here: cv_mc equals GM to round-off
            assert abs(float(v.sel(k=k, dim=D_, estimator="cv_mc")) - gm) <= 1e-8 * scale
            for name in ("quad_mc", "direct_mc"):
                diff = abs(float(v.sel(k=k, dim=D_, estimator=name)) - gm)
                assert diff <= 4.5 * float(se.sel(k=k, dim=D_, estimator=name)) + 1e-10 * scale
        # full space: GM with U = I is the exact Gaussian expectation
        I = torch.eye(qp.num_params, dtype=torch.float64)
        a_, c_, B_ = dense_coefficients(qp, k, I)
        full = float(gaussian_moment(a_, c_, B_, sigma))
        diff = abs(float(v.sel(k=k, dim=1, estimator="full_mc")) - full)
        assert diff <= 4.5 * float(se.sel(k=k, dim=1, estimator="full_mc")) + 1e-10 * full


@given(qp=quadratic_problems(min_samples=4, max_samples=9, min_dim=3, max_dim=6),
       sigma=sigmas(1e-3, 1.0))
@settings(max_examples=15)
def test_gm_matches_dense_assembly_and_rate_bound(qp, sigma):
    ks = list(range(1, qp.num_samples))
    D = qp.num_params - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = stabilization(qp, ks, sigmas=[sigma], dims=[D], estimators=["gm"], subspace="fixed",
                           tol=1e-12)
    es = curvprobe.top_eigenspace(qp.hessian_operator(max(ks)), D, tol=1e-12)
    M_l = float(qp.a.abs().max())
    M_H = float(torch.linalg.matrix_norm(qp.per_sample_hessians, ord=2).max())
    G = qp.per_sample_gradients
    for k in ks:
        a, c, B = dense_coefficients(qp, k, es.vectors)
        gm_dense = float(gaussian_moment(a, c, B, sigma))
        gm = float(ds["value"].sel(k=k, dim=D, estimator="gm").item())
        assert math.isclose(gm, gm_dense, rel_tol=1e-8, abs_tol=1e-14)
        M_g = float((G[k] - G[:k].mean(0)).norm())
        assert gm <= float(rate_bound(M_l, M_g, M_H, sigma, D, k)) * (1 + 1e-9)


def test_per_k_subspace_on_mlp_and_warm_start():
    problem = mlp_problem(n=60)
    ks = [10, 20, 30, 40]
    seen = []
    ds = stabilization(problem, ks, sigmas=[1e-2], dims=[1, 3], mc_samples=8,
                       on_k=lambda j, k, es: seen.append((j, k, es.D)))
    assert seen == [(0, 10, 3), (1, 20, 3), (2, 30, 3), (3, 40, 3)]
    assert bool(ds["converged"].all())
    assert float(ds["residuals"].max()) <= 1e-3
    miss = ds["miss_probability"].values  # the guard's bound, one per solve
    assert ((miss > 0) & (miss <= 1)).all()
    # per-k eigenvalues are those of H^(k)
    for k in ks:
        H = torch.func.hessian(lambda w, k=k: problem.chunk_losses(w, 0, k).mean())(problem.params)
        top = torch.linalg.eigvalsh(H).flip(0)[:3].numpy()
        assert np.allclose(ds["eigenvalues"].sel(k=k).values, top, rtol=0, atol=2e-3 * abs(top[0]))
    # doubling the samples moves the subspace too far to carry the basis; one
    # more sample carries it with HVPs on that sample only
    assert np.array_equal(ds["hvp_cost"].values, ds["hvps"].values)
    near = stabilization(problem, [40, 41, 42], sigmas=[1e-2], dims=[3], estimators=["gm"])
    extra = near["hvp_cost"].values - near["hvps"].values
    assert extra[0] == 0 and (extra[1:] > 0).all()
    assert (near["hvps"].values[1:] < near["hvps"].values[0]).all()
    fixed = stabilization(problem, ks, sigmas=[1e-2], dims=[1, 3], mc_samples=8, subspace="fixed")
    assert "fixed" in fixed.attrs["subspace_note"]
    assert fixed["hvp_cost"].values[0] == fixed["hvps"].values[0] > 0
    assert (fixed["hvp_cost"].values[1:] == 0).all()
    # estimators not depending on D are broadcast
    full = ds["value"].sel(estimator="full_mc")
    assert np.array_equal(full.sel(dim=1).values, full.sel(dim=3).values)


def test_common_random_numbers_and_seed():
    problem = mlp_problem(n=30)
    kw = dict(sigmas=[1e-2], dims=[2], estimators=["full_mc", "direct_mc"], mc_samples=6)
    a = stabilization(problem, [5, 10], seed=1, **kw)
    b = stabilization(problem, [5, 10], seed=1, **kw)
    c = stabilization(problem, [5, 10], seed=2, **kw)
    xr.testing.assert_equal(a["value"], b["value"])
    assert not np.array_equal(a["value"].values, c["value"].values)


def test_general_p_refuses_gm_and_labels_units():
    problem = mlp_problem(n=30)
    with pytest.raises(ValueError, match="p = 2 only"):
        stabilization(problem, [5, 10], sigmas=[1e-2], dims=[2], mc_samples=6, p=1,
                      estimators=["full_mc", "direct_mc", "gm", "quad_mc"])
    ds = stabilization(problem, [5, 10], sigmas=[1e-2], dims=[2], mc_samples=6, p=1,
                       estimators=["delta1", "full_mc", "direct_mc", "quad_mc"])
    assert np.isfinite(ds["value"]).all()
    assert ds["estimator_units"].sel(estimator="delta1") == "loss"
    assert ds["estimator_units"].sel(estimator="full_mc") == "loss^1"


def test_save_load_roundtrip(tmp_path):
    problem = mlp_problem(n=20)
    ds = stabilization(problem, [3, 6], sigmas=[1e-2], dims=[2], mc_samples=4,
                       estimators=["delta1", "gm", "direct_mc"])
    ds.attrs["extra"] = {"nested": [1, 2]}
    ds.attrs["flag"] = True
    ds.attrs["nothing"] = None
    path = curvprobe.save(ds, tmp_path / "r.nc")
    back = curvprobe.load(path)
    assert back.attrs["extra"] == {"nested": [1, 2]} and back.attrs["flag"] is True
    assert back.attrs["nothing"] is None
    xr.testing.assert_identical(back, ds)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        curvprobe.save(ds, path)
    curvprobe.save(ds, path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]  # no temporary left behind


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(ks=[5, 3]), "sorted"),
    (dict(ks=[3, 3]), "sorted"),
    (dict(ks=[0, 3]), "ks must hold integers >= 1"),
    (dict(ks=[6, 3]), "sorted and without duplicates"),
    (dict(ks=[3, 30]), r"\[1, 29\]"),
    (dict(sigmas=[0.0]), "positive and finite"),
    (dict(sigmas=[float("nan")]), "positive and finite"),
    (dict(dims=[0]), "dims must hold integers >= 1"),
    (dict(dims=[10_000]), "1 <= D < N"),
    (dict(estimators=["magic"]), "valid: delta1"),
    (dict(mc_samples=1), ">= 2"),
    (dict(subspace="sometimes"), "valid: per_k"),
    (dict(p=0.5), "p must be"),
    (dict(p=3, estimators=["gm"]), "p = 2 only"),
    (dict(eigen_kwargs={"init": None}), "init=..."),
])
def test_bad_input(kwargs, match):
    problem = mlp_problem(n=30)
    args = dict(ks=[3, 6], sigmas=[1e-2], dims=[2], mc_samples=4) | kwargs
    ks = args.pop("ks")
    with pytest.raises(ValueError, match=match):
        stabilization(problem, ks, **args)


def test_tiny_transformer_subspace_vs_full():
    """Δ₂^(D)/Δ₂ and GM vs direct MC inside the validated regime (reported, loosely checked)."""
    problem = gpt_problem(n=40)
    validity = curvprobe.quadratic_validity(problem, [1e-3, 1e-2], k=30, mc_samples=8)
    sig = validity.attrs["validated_sigma_max"]
    assert sig >= 1e-3
    ds = stabilization(problem, [10, 20, 30], sigmas=[sig], dims=[1, 4], mc_samples=32,
                       validity=validity)
    v = ds["value"].sel(sigma=sig)
    direct, gm = v.sel(estimator="direct_mc"), v.sel(estimator="gm")
    se = ds["stderr"].sel(sigma=sig, estimator="direct_mc")
    # inside the regime the surrogate matches the true criterion
    assert (np.abs(direct - gm) <= 4.5 * se + 0.05 * np.abs(gm)).all()
    ratio = (v.sel(estimator="direct_mc") / v.sel(estimator="full_mc")).values
    assert np.isfinite(ratio).all() and (ratio > 0).all()


def test_num_samples_is_a_deprecated_alias_of_mc_samples():
    problem = mlp_problem(n=12)
    kw = dict(sigmas=[1e-2], dims=[2], estimators=["full_mc", "quad_mc"])
    with pytest.warns(DeprecationWarning, match="mc_samples"):
        old = stabilization(problem, [3, 6], num_samples=4, **kw)
    new = stabilization(problem, [3, 6], mc_samples=4, **kw)
    xr.testing.assert_identical(without_volatile(old.drop_vars(["stage_seconds", "stage"])),
                                without_volatile(new.drop_vars(["stage_seconds", "stage"])))


def test_default_estimators_drop_the_p2_only_ones_at_other_p():
    problem = mlp_problem(n=12)
    ds = stabilization(problem, [3, 6], sigmas=[1e-2], dims=[2], mc_samples=4, p=3)
    assert list(ds["estimator"].values) == ["delta1", "full_mc", "direct_mc", "quad_mc"]
    assert list(ds["estimator_units"].values) == ["loss", "loss^3", "loss^3", "loss^3"]


def test_merge_parts_reassembles_stabilization():
    from curvprobe.criteria import StabilizationSpec, iter_parts, merge_parts
    from curvprobe.criteria.sweep import part_names

    problem = mlp_problem(n=30)
    spec = StabilizationSpec(ks=(4, 8, 16), sigmas=(1e-2,), dims=(1, 3), mc_samples=4,
                             estimators=("delta1", "full_mc", "direct_mc", "gm"))
    parts = list(iter_parts(problem, spec))
    assert [p.name for p in parts] == part_names(spec) == ["fullspace", "k_000004", "k_000008", "k_000016"]
    assert parts[0].eigenspace is None and all(p.eigenspace is not None for p in parts[1:])
    merged = merge_parts([p.dataset for p in parts], spec.estimators)
    direct = stabilization(problem, [4, 8, 16], sigmas=[1e-2], dims=[1, 3], mc_samples=4,
                           estimators=["delta1", "full_mc", "direct_mc", "gm"])
    drop = ["stage_seconds", "stage"]
    xr.testing.assert_identical(without_volatile(merged.drop_vars(drop)),
                                without_volatile(direct.drop_vars(drop)))
    stages = {str(s): float(v) for s, v in zip(merged["stage"].values, merged["stage_seconds"].values)}
    summed = sum(float(p.dataset["stage_seconds"].sum()) for p in parts)
    assert sum(stages.values()) == pytest.approx(summed)
    # the estimator order follows the request; parts alone merge too
    back = merge_parts([p.dataset for p in parts], ["gm", "delta1", "direct_mc", "full_mc"])
    assert list(back["estimator"].values) == ["gm", "delta1", "direct_mc", "full_mc"]
    only_full = merge_parts([parts[0].dataset])
    assert list(only_full["estimator"].values) == ["delta1", "full_mc"]
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_parts([])


def test_resumable_parts_do_not_depend_on_skipped_ones():
    from curvprobe.criteria import StabilizationSpec, iter_parts

    problem = mlp_problem(n=30)
    spec = StabilizationSpec(ks=(4, 8, 16), sigmas=(1e-2,), dims=(2,), mc_samples=4,
                             estimators=("direct_mc", "gm"), resumable=True)
    full = list(iter_parts(problem, spec))
    vectors = full[1].eigenspace.vectors.detach().to("cpu", torch.float64)
    resumed = list(iter_parts(problem, spec, skip={"k_000004", "k_000008"}, init=vectors))
    assert [p.name for p in resumed] == ["k_000016"]
    drop = ["stage_seconds", "stage"]
    xr.testing.assert_identical(without_volatile(resumed[0].dataset.drop_vars(drop)),
                                without_volatile(full[2].dataset.drop_vars(drop)))
