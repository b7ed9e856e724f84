"""Summary and Dataset words for eigenspaces: "converged" is the residual test,
"certified" only at a stated miss bound."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from curvprobe import stabilization
from curvprobe.app.report import certificate_line, eigen_table, summary_markdown
from curvprobe.core.problem import Problem
from curvprobe.zoo.models import MLP, MLPConfig, sample_cross_entropy


def small_problem() -> Problem:
    gen = torch.Generator().manual_seed(0)
    model = MLP(MLPConfig(widths=(5, 8, 3)), seed=0).double().eval()
    X = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    return Problem(model, sample_cross_entropy, X, y, batch_size=7)


def measure(**eigen_kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = stabilization(small_problem(), [4, 8], sigmas=[1e-3], dims=[1, 3], mc_samples=4,
                           estimators=["direct_mc", "gm"], subspace="fixed", eigen_kwargs=eigen_kwargs)
    return ds, [str(w.message) for w in caught]


def test_certified_at_the_stated_bound():
    ds, _ = measure(guard_steps=40, max_miss_probability=0.05)
    assert ds.attrs["miss_bound"] == 0.05 and ds.attrs["eigen_certified"] == 1
    assert bool(ds["certified"].all()) and float(ds["miss_probability"].max()) <= 0.05
    line = certificate_line(ds)
    assert line.startswith("converged 3/3; certified at miss probability ≤ 0.05")
    assert "yes (≤ 0.05)" in eigen_table(ds)
    assert line in summary_markdown(ds)


def test_not_certified_when_the_bound_is_not_reached():
    """Residuals converge; a 2-step guard cannot bound a miss at 1e-9: the
    summary says so with both numbers, and the run warns."""
    ds, caught = measure(guard_steps=2, max_miss_probability=1e-9)
    assert bool(ds["converged"].all())  # the residual test
    assert ds.attrs["eigen_certified"] == 0 and not bool(ds["certified"].any())
    miss = float(ds["miss_probability"].max())
    assert miss > 1e-9
    expected = f"converged 3/3; not certified: miss probability {miss:.2g} > 1e-09 (the miss bound)"
    assert certificate_line(ds) == expected
    assert "certified at" not in certificate_line(ds)
    assert any("not certified at miss probability ≤ 1e-09" in m for m in caught)


def test_no_bound_no_certificate():
    """Without a stated bound the guard's 10 steps decide convergence and the
    bound is reported, never called a certificate."""
    ds, _ = measure()
    assert math.isnan(ds.attrs["miss_bound"]) and ds.attrs["eigen_certified"] == 0
    line = certificate_line(ds)
    assert line.startswith("converged 3/3; miss probability")
    assert "not certified (no miss bound stated" in line
    assert "no bound" in eigen_table(ds)


@pytest.mark.parametrize("bound", [0.0, 0.05])
def test_probe_config_states_its_bound(bound):
    """The probe config's default miss bound reaches the solver; 0 states none."""
    from curvprobe.app.config import load_config

    config = load_config(None, {"model": "builtin:mlp", "ks": [4], "sigmas": [0.1],
                                **({} if bound else {"miss_bound": 0.0})})
    options = config.spec().eigen_options
    assert options.get("max_miss_probability") == (bound or None)
    assert config.guard_steps == 40
