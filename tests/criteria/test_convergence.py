"""Monte Carlo convergence at one k: running estimates agree with stabilization's at S_max."""

from __future__ import annotations

import numpy as np
import pytest

from curvprobe import stabilization
from curvprobe.criteria.convergence import CONVERGENCE_ESTIMATORS, mc_convergence

from conftest import mlp_problem


def test_running_estimates_end_at_the_stabilization_values():
    problem = mlp_problem(n=30)
    kw = dict(sigmas=[1e-2, 1e-1], dims=[1, 3], seed=4)
    conv = mc_convergence(problem, 12, mc_samples=16, sample_counts=[2, 8, 16], **kw)
    assert list(conv["estimator"].values) == list(CONVERGENCE_ESTIMATORS)
    assert list(conv["S"].values) == [2, 8, 16]
    ds = stabilization(problem, [12], mc_samples=16, estimators=list(CONVERGENCE_ESTIMATORS), **kw)
    last = conv.sel(S=16)
    for name in CONVERGENCE_ESTIMATORS:
        np.testing.assert_allclose(last["value"].sel(estimator=name).values,
                                   ds["value"].sel(k=12, estimator=name).values, rtol=1e-12)
        np.testing.assert_allclose(last["stderr"].sel(estimator=name).values,
                                   ds["stderr"].sel(k=12, estimator=name).values, rtol=1e-6, atol=1e-300)
    gm = conv["value"].sel(estimator="gm").values
    assert np.all(gm == gm[:1])  # a closed form: constant in S
    assert (conv["stderr"].sel(estimator="gm") == 0).all()
    np.testing.assert_array_equal(conv["eigenvalues"].values, ds["eigenvalues"].sel(k=12).values)
    assert (conv["eval_seconds"] >= 0).all()
    assert conv.attrs["miss_bound"] is None and not conv.attrs["eigen_certified"]  # nothing stated


def test_eigenspace_certified_at_a_stated_miss_bound(tmp_path):
    """With ``max_miss_probability`` the eigenspace is certified at it, and
    the attrs say so through a save and load."""
    from curvprobe.results import load, save

    conv = mc_convergence(mlp_problem(n=30), 12, sigmas=[1e-2], dims=[1, 3], mc_samples=4, seed=1,
                          eigen_kwargs={"max_miss_probability": 0.05, "guard_steps": 40})
    assert conv.attrs["eigen_certified"] and conv.attrs["miss_probability"] <= 0.05
    save(conv, tmp_path / "conv.nc")
    back = load(tmp_path / "conv.nc").attrs
    assert back["miss_bound"] == 0.05 and back["eigen_certified"] is True


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(sample_counts=[1, 4]), r"\[2, 4\]"),
    (dict(sample_counts=[8]), r"\[2, 4\]"),
    (dict(dims=[0]), "dims must hold integers >= 1"),
])
def test_bad_input(kwargs, match):
    problem = mlp_problem(n=20)
    args = dict(sigmas=[1e-2], dims=[2], mc_samples=4) | kwargs
    with pytest.raises(ValueError, match=match):
        mc_convergence(problem, 6, **args)
