"""Quadratic validity: relative error of the second-order model per σ, regime flags."""

from __future__ import annotations

import pytest

import curvprobe
from curvprobe import stabilization
from curvprobe.testing import QuadraticProblem

from conftest import mlp_problem


def test_validity_flags_and_warning():
    problem = mlp_problem(n=40)
    validity = curvprobe.quadratic_validity(problem, [1e-3, 1e-2, 3.0], k=20, mc_samples=8)
    assert validity["rel_error_mean"].sel(sigma=1e-3) < 0.1
    assert validity["rel_error_mean"].sel(sigma=3.0) > validity["rel_error_mean"].sel(sigma=1e-3)
    regime = validity.attrs["validated_sigma_max"]
    assert regime < 3.0
    with pytest.warns(UserWarning, match="beyond the validated"):
        ds = stabilization(problem, [5, 10], sigmas=[1e-3, 3.0], dims=[2], mc_samples=4,
                           estimators=["gm", "direct_mc"], validity=validity)
    assert ds["outside_validated_regime"].sel(sigma=3.0)
    assert not ds["outside_validated_regime"].sel(sigma=1e-3)


def test_validity_exact_for_quadratics():
    qp = QuadraticProblem.random(8, 5, seed=0)
    v = curvprobe.quadratic_validity(qp, [1e-2, 1.0, 10.0], mc_samples=4)
    assert float(v["rel_error_mean"].max()) < 1e-8
    assert v.attrs["validated_sigma_max"] == 10.0
