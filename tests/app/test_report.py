"""The Markdown summary of a stabilization run."""

from __future__ import annotations

import warnings

import pytest
import torch

from curvprobe import quadratic_validity, stabilization
from curvprobe.app.report import slope_table, summary_markdown, table
from curvprobe.core.problem import Problem
from curvprobe.criteria.convergence import mc_convergence
from curvprobe.criteria.spec import ESTIMATORS
from curvprobe.zoo.models import MLP, MLPConfig, sample_cross_entropy


def mlp_problem(n: int = 24, seed: int = 0, batch_size: int = 7) -> Problem:
    """tests/conftest.py's mlp problem (tests/app/conftest.py shadows the module name here)."""
    gen = torch.Generator().manual_seed(seed)
    model = MLP(MLPConfig(widths=(5, 8, 3)), seed=seed).double().eval()
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return Problem(model, sample_cross_entropy, X, y, batch_size=batch_size)


@pytest.fixture(scope="module")
def run():
    problem = mlp_problem(n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validity = quadratic_validity(problem, [1e-3, 1e-2, 3.0], k=32, mc_samples=4)
        ds = stabilization(problem, [4, 8, 16, 32], sigmas=[1e-3, 3.0], dims=[1, 3], mc_samples=4,
                           estimators=list(ESTIMATORS), validity=validity)
    conv = mc_convergence(problem, 16, sigmas=[1e-3], dims=[1, 3], mc_samples=8)
    return ds, validity, conv


def test_table_escapes_pipes_and_pads():
    out = table(["a", "|x−y|"], [[1, "long cell"], ["|b|", 2]]).splitlines()
    assert out[0].startswith("| a ") and "\\|x−y\\|" in out[0]
    assert len({len(line) for line in out}) == 1  # padded to equal width
    assert out[1].startswith("|---")


def test_slope_table_rows_use_the_registry_labels(run):
    ds, _, _ = run
    text = slope_table(ds)
    for name, entry in ESTIMATORS.items():
        assert entry.label in text, name
    assert "Δ₂^(D) direct MC, D=3" in text and "σ=3 (beyond)" in text


def test_summary_holds_every_section(run):
    ds, validity, conv = run
    text = summary_markdown(ds, validity=validity, convergence=conv, title="t", notes=["note one"])
    assert text.startswith("# t")
    assert "note one" in text
    for heading in ("## Fitted slope of each criterion", "## Subspace vs full space",
                    "## GM vs direct Monte Carlo", "## Stage timings", "## Eigensolver certificates"):
        assert heading in text, heading
    assert "validated" in text  # the validity sweep's regime is reported


def test_summary_and_figures_of_a_run_over_orderings():
    from curvprobe.app.plots import slope_or_none, stabilization_figures

    problem = mlp_problem(n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = stabilization(problem, [4, 8, 16, 32], sigmas=[1e-2, 1e-1], dims=[1, 3], mc_samples=8,
                           estimators=["delta1", "full_mc", "direct_mc", "gm", "cv_mc"], orderings=6)
    text = summary_markdown(ds, title="t")
    assert "orderings: 6 orderings of the first 33 samples" in text
    assert "## Curvature part Δ₂ − Δ₁²" in text
    assert "captured fraction, D=3 (control variate)" in text and "Δ₁²/Δ₂" in text
    # slopes are fitted to the ordering averages
    mean = ds["ordering_mean"].sel(estimator="full_mc", sigma=1e-2, dim=3).values
    fit = slope_or_none(ds["k"].values, mean)
    assert f"{fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]" in slope_table(ds)
    figures = stabilization_figures(ds)
    assert {"criteria_vs_k", "subspace_ratio", "gm_agreement", "captured_fraction"} <= set(figures)
