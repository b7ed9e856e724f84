"""The curriculum protocol's bookkeeping and measurement (criteria/protocol.py)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from curvprobe import stabilization
from curvprobe.criteria.protocol import due, k_grid, measure_at, merge_seeds
from curvprobe.criteria.spec import StabilizationSpec

from conftest import mlp_problem


def test_k_grid_log_and_linear():
    assert k_grid(8, 512, 7) == (8, 16, 32, 64, 128, 256, 512)
    assert k_grid(10, 50, 5, "linear") == (10, 20, 30, 40, 50)
    dense = k_grid(1, 10, 10)
    assert dense == tuple(range(1, 11))  # rounding merges are refilled
    assert len(k_grid(2, 40, 12)) == 12
    with pytest.raises(ValueError, match="spacing"):
        k_grid(1, 10, 3, "cubic")
    with pytest.raises(ValueError, match="k_min"):
        k_grid(10, 5, 3)


def test_due_lists_every_k_the_samples_seen_reach():
    ks = (4, 8, 16)
    assert due(4, ks, 0) == []  # k + 1 = 5 samples needed
    assert due(5, ks, 0) == [0]
    assert due(20, ks, 0) == [0, 1, 2]  # one step may cross several k
    assert due(20, ks, 2) == [2]
    assert due(100, ks, 3) == []


def test_measure_at_is_the_stabilization_at_one_k():
    problem = mlp_problem(n=20)
    spec = StabilizationSpec(ks=(99,), sigmas=(1e-2,), dims=(1, 2), mc_samples=6, seed=3,
                             estimators=("delta1", "full_mc", "direct_mc", "gm"))
    ds = measure_at(problem, 12, spec)
    ref = stabilization(problem, [12], sigmas=[1e-2], dims=[1, 2], mc_samples=6, seed=3,
                        estimators=["delta1", "full_mc", "direct_mc", "gm"])
    assert list(ds["k"].values) == [12] and "stage_seconds" not in ds
    xr.testing.assert_equal(ds["value"], ref["value"])
    xr.testing.assert_equal(ds["captured_fraction"], ref["captured_fraction"])


def test_merge_seeds_keeps_each_seed_and_adds_mean_and_spread():
    problem = mlp_problem(n=20)
    spec = StabilizationSpec(ks=(1,), sigmas=(1e-2,), dims=(1,), mc_samples=4,
                             estimators=("delta1", "full_mc"))
    per_seed = {}
    for seed in (3, 1):
        curve = xr.concat([measure_at(problem, k, StabilizationSpec(**{**spec.__dict__, "seed": seed}))
                           for k in (4, 8)], dim="k")
        curve["validation_loss"] = ("k", [1.0 + seed, 2.0 + seed])
        curve.attrs["per_k_variables"] = ["validation_loss"]
        per_seed[seed] = curve
    ds = merge_seeds(per_seed)
    assert list(ds["seed"].values) == [1, 3]
    v = ds["value"]
    xr.testing.assert_allclose(ds["seed_mean"], v.mean("seed"))
    np.testing.assert_allclose(ds["seed_std"], v.std("seed", ddof=1))
    np.testing.assert_allclose(ds["validation_loss_mean"], [3.0, 4.0])
    np.testing.assert_allclose(ds["validation_loss_std"], [np.sqrt(2), np.sqrt(2)])
    # delta1 does not depend on the draws' seed; full_mc does
    assert float(ds["seed_std"].sel(estimator="delta1").max()) == 0
    assert float(ds["seed_std"].sel(estimator="full_mc").min()) > 0
    single = merge_seeds({0: per_seed[1]})
    assert bool(single["seed_std"].isnull().all())
    with pytest.raises(ValueError, match="no seeds"):
        merge_seeds({})
