"""Figures put every quantity on an axis in its own units, in words (issue #15).

Δ₁-type criteria (|δ|, loss) and Δ_p-type ones (|δ|^p, loss^p) never share a
y axis; panels comparing one quantity share their y scale; the subspace ratio
has error bars; the MC-convergence panels show the validated regime; stage
timings are in run order with a note on the surrogate estimators' times; no
axis, legend or tick label is a code name such as ``direct_mc``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from curvprobe import quadratic_validity, stabilization
from curvprobe.app import plots
from curvprobe.criteria.convergence import mc_convergence
from curvprobe.criteria.protocol import merge_seeds
from curvprobe.criteria.spec import ESTIMATORS

from conftest import mlp_problem

ESTIMATORS_DRAWN = ("delta1", "sphere", "full_mc", "direct_mc", "gm", "cv_mc", "quad_mc")
CODE_NAME = re.compile(r"\b(" + "|".join(n for n in ESTIMATORS if not n.isalpha())
                       + r"|stage_seconds|eval_\w+)\b")


@pytest.fixture(scope="module")
def results():
    problem = mlp_problem(n=40)
    kw = dict(sigmas=[1e-3, 3e-1], dims=[1, 3], mc_samples=6, estimators=list(ESTIMATORS_DRAWN))
    ds = stabilization(problem, [4, 8, 16, 32], orderings=3, subspace="pooled", **kw)
    validity = quadratic_validity(problem, [1e-3, 1e-2, 3e-1], k=32, mc_samples=4)
    conv = mc_convergence(problem, 16, sigmas=[1e-3, 3e-1], dims=[1, 3], mc_samples=8)
    return ds, validity, conv


def _texts(fig) -> list[str]:
    """Every label, title, tick label and legend entry of ``fig``."""
    out = [fig.get_suptitle()]
    for ax in fig.axes:
        out += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return [t for t in out if t]


def _legend_estimators(ax) -> set[str]:
    """The estimators whose registry label (with D filled in, a fitted slope after it) is a legend
    entry of ``ax``."""
    legend = ax.get_legend()
    entries = {re.sub(r"\^\(\d+\)", "^(D)", re.sub(r", D=\d+$", "", t.get_text().split(": slope")[0]))
               for t in (legend.get_texts() if legend else [])}
    return {name for name, e in ESTIMATORS.items() if e.label in entries}


def test_loss_and_squared_loss_criteria_never_share_an_axis(results):
    ds = results[0]
    fig = plots.plot_criteria_vs_k(ds, estimators=ESTIMATORS_DRAWN)
    axes = np.array(fig.axes).reshape(2, 2)  # rows: units; columns: σ
    for row, (units, pretty) in enumerate((("loss", "(loss)"), ("loss^2", "(loss²)"))):
        assert axes[row, 0].get_ylabel().endswith(pretty)
        for ax in axes[row]:
            drawn = _legend_estimators(ax)
            assert drawn and {ESTIMATORS[e].units(2) for e in drawn} == {units}, drawn
        assert axes[row, 0].get_shared_y_axes().joined(axes[row, 0], axes[row, 1])
    assert not axes[0, 0].get_shared_y_axes().joined(axes[0, 0], axes[1, 0])
    assert _legend_estimators(axes[0, 0]) == {"delta1", "sphere"}


def test_units_come_from_the_dataset_at_any_order():
    problem = mlp_problem(n=20)
    ds = stabilization(problem, [4, 8, 16], sigmas=[1e-2], dims=[2], mc_samples=4, p=3)
    groups = plots.unit_groups(ds, ("delta1", "full_mc", "direct_mc", "gm"))
    assert groups == [("loss", ["delta1"]), ("loss^3", ["full_mc", "direct_mc"])]
    fig = plots.plot_criteria_vs_k(ds)
    assert [ax.get_ylabel() for ax in fig.axes] == ["|loss change| (loss)",
                                                     "mean |loss change|^3 (loss³)"]


def test_subspace_ratio_has_error_bars_and_one_y_scale(results):
    ds = results[0]
    fig = plots.plot_subspace_ratio(ds)
    assert len(fig.axes) == ds.sizes["sigma"]
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])
    for ax in fig.axes:
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == ds.sizes["dim"]
        assert all(c.has_yerr for c in bars)
    ratio, se = plots._ratio(ds, {"sigma": ds["sigma"].values[1], "dim": 3}, "direct_mc", "full_mc")
    assert ratio.shape == se.shape == (ds.sizes["k"],) and np.all(se > 0)


def test_ratio_error_keeps_the_correlation_of_paired_orderings(results):
    """A ratio of an estimate to itself is exactly 1 with zero error: the paired residuals vanish
    (the independent-errors formula would give √2·relative error instead)."""
    ds = results[0]
    cell = {"sigma": ds["sigma"].values[0], "dim": 3}
    ratio, se = plots._ratio(ds, cell, "direct_mc", "direct_mc")
    assert np.allclose(ratio, 1)
    mc = ds["ordering_mc_stderr"].sel({**cell, "estimator": "direct_mc"}).values
    mean = ds["ordering_mean"].sel({**cell, "estimator": "direct_mc"}).values
    assert np.allclose(se, np.sqrt(2) * mc / mean)  # Monte Carlo part only, no ordering spread


def test_mc_convergence_marks_the_validated_regime(results):
    _, validity, conv = results
    fig = plots.plot_mc_convergence(conv, validity=validity)
    regime = validity.attrs["validated_sigma_max"]
    assert 1e-3 <= regime < 3e-1
    axes = np.array(fig.axes).reshape(2, 2)
    assert all("validated" in ax.get_title() and "beyond" not in ax.get_title() for ax in axes[0])
    assert all("beyond the validated regime" in ax.get_title() for ax in axes[1])
    assert axes[1, 0].get_facecolor() != axes[0, 0].get_facecolor()
    assert axes[0, 0].get_shared_y_axes().joined(axes[0, 0], axes[0, 1])
    assert axes[0, 0].get_ylabel() == "estimate of Δ₂^(D) (loss²)"
    unknown = plots.plot_mc_convergence(conv)
    assert "validated regime unknown" in unknown.get_suptitle()


def test_stage_timings_in_run_order_with_the_surrogate_note(results):
    ds, _, conv = results
    extra = {"model (load or train)": 1.0, "validity sweep": 2.0, plots.STABILIZATION_RUN: 9.0,
             "MC convergence run": 3.0}
    fig = plots.plot_stage_timings(ds, convergence=conv, extra=extra)
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    stages = [plots._STAGE_LABELS[str(s)] for s in ds["stage"].values]
    assert names == ["model (load or train)", "validity sweep", *stages, "MC convergence run"]
    assert "losses at w* (Δ₁)" in names[:3 + 1]  # the run's first stage follows the validity sweep
    assert "GM can show slower than quadratic MC" in fig.axes[1].get_xlabel().replace("\n", " ")
    assert [t.get_text() for t in plots.plot_stage_timings(ds).axes[0].get_yticklabels()] == stages


def test_no_figure_labels_with_code_names(results):
    ds, validity, conv = results
    figures = plots.stabilization_figures(ds, validity=validity, convergence=conv,
                                          extra_timings={plots.STABILIZATION_RUN: 1.0})
    assert set(figures) >= {"criteria_vs_k", "subspace_ratio", "stage_timings", "mc_convergence"}
    for name, fig in figures.items():
        found = [t for t in _texts(fig) if CODE_NAME.search(t)]
        assert not found, (name, found)


def test_curriculum_figure_splits_units_too():
    seeds = {}
    for seed in (0, 1):
        problem = mlp_problem(n=20, seed=seed)
        seeds[seed] = stabilization(problem, [4, 8, 16], sigmas=[1e-2], dims=[2], mc_samples=4,
                                    estimators=["delta1", "full_mc", "direct_mc", "gm"])
    fig = plots.plot_curriculum(merge_seeds(seeds))
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["|loss change| (loss)", "mean squared loss change (loss²)"]
    assert _legend_estimators(fig.axes[0]) == {"delta1"}
    assert _legend_estimators(fig.axes[1]) == {"full_mc", "direct_mc", "gm"}
