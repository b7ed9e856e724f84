"""The Hessian spectrum report against the dense Hessian of a small model."""

from __future__ import annotations

import pytest
import torch

import curvprobe.spectral.hessian as hessian_module
from curvprobe.app.report import hessian_markdown
from curvprobe.spectral.hessian import hessian_report

from conftest import dense_hessian, mlp_problem


def test_report_matches_the_dense_spectrum():
    problem = mlp_problem(n=24)
    ds = hessian_report(problem, top=3, bottom=2, layer_top=2, tol=1e-8, trace_matvecs=60,
                        density_probes=4, density_steps=30)
    lam = torch.linalg.eigvalsh(dense_hessian(problem)).numpy()
    scale = abs(lam).max()
    assert abs(ds["top_eigenvalue"].values - lam[::-1][:3]).max() <= 1e-6 * scale
    assert abs(ds["bottom_eigenvalue"].values - lam[:2][::-1]).max() <= 1e-6 * scale
    assert abs(float(ds["trace"]) - lam.sum()) <= 4 * float(ds["trace_stderr"]) + 1e-9 * scale
    grid, density = ds["grid"].values, ds["density"].values
    assert abs((density * (grid[1] - grid[0])).sum() - 1) < 0.05  # a probability density on its grid
    assert ds["layer_converged"].all()
    assert set(ds.attrs["products"]) == {"top", "bottom", "trace", "density", "layers"}


def test_settings_and_certificates_are_recorded():
    problem = mlp_problem(n=24)
    ended = []  # the hook runs once after each part (the CLI's --threads auto re-decides there)
    ds = hessian_report(problem, top=3, bottom=2, layer_top=1, tol=1e-8, bottom_tol=1e-6, layer_tol=1e-5,
                        trace_matvecs=12, density_probes=2, density_steps=10,
                        between_stages=lambda: ended.append(1))
    assert len(ended) == len(ds.attrs["products"]) == 5
    attrs = ds.attrs
    assert (attrs["tol"], attrs["bottom_tol"], attrs["layer_tol"]) == (1e-8, 1e-6, 1e-5)
    assert (attrs["trace_matvecs"], attrs["density_probes"], attrs["density_steps"]) == (12, 2, 10)
    assert attrs["products"]["trace"] == 12 and attrs["products"]["density"] == 20
    assert set(attrs["cpu_seconds"]) == set(attrs["seconds"]) == set(attrs["products"])
    assert attrs["not_converged"] == {"top": 0, "bottom": 0, "layers": 0}
    assert (ds["bottom_residual"] <= 1e-6).all() and (ds["layer_residual"] <= 1e-5).all()
    lam = torch.linalg.eigvalsh(dense_hessian(problem)).numpy()
    assert attrs["bottom_scale"] <= abs(lam).max() * (1 + 1e-9)  # s never exceeds ‖H‖
    assert attrs["top_scale"] == pytest.approx(lam[-1], rel=1e-8)
    assert "every eigenpair converged (residual within its tolerance, guard passed)" in hessian_markdown(ds)


def test_certified_at_a_miss_bound():
    """With ``miss_bound`` every eigenspace's guard runs until its bound
    reaches it: converged pairs carry a bound ≤ miss_bound at both ends and
    in every layer, and the settings are recorded; a guard too short for the
    bound leaves the pairs not converged."""
    problem = mlp_problem(n=24)
    ds = hessian_report(problem, top=3, bottom=2, layer_top=1, tol=1e-6, trace_matvecs=6,
                        density_probes=1, density_steps=5, miss_bound=0.01, guard_steps=60)
    attrs = ds.attrs
    assert (attrs["miss_bound"], attrs["guard_steps"]) == (0.01, 60)
    assert attrs["not_converged"] == {"top": 0, "bottom": 0, "layers": 0}
    assert attrs["top_miss_probability"] <= 0.01 and attrs["bottom_miss_probability"] <= 0.01
    assert (ds["layer_miss_probability"].fillna(0.0) <= 0.01).all()
    with pytest.warns(Warning, match="not converged"):
        short = hessian_report(problem, top=3, bottom=2, layer_top=0, tol=1e-6, trace_matvecs=6,
                               density_probes=1, density_steps=5, miss_bound=1e-12, guard_steps=2)
    assert short.attrs["not_converged"]["top"] > 0
    with pytest.raises(ValueError, match="miss_bound"):
        hessian_report(problem, miss_bound=1.5)


def test_a_starved_solve_is_reported_not_converged(monkeypatch):
    """An eigensolve that runs out of products keeps its flags False; the
    ``not_converged`` count and the summary say so."""
    problem = mlp_problem(n=24)
    solve = hessian_module.top_eigenspace

    def starved(op, D, **options):
        return solve(op, D, **options, max_matvecs=6 if options.get("which") == "smallest" else None)

    monkeypatch.setattr(hessian_module, "top_eigenspace", starved)
    with pytest.warns(Warning, match="not converged"):
        ds = hessian_report(problem, top=2, bottom=2, layer_top=0, tol=1e-8, trace_matvecs=6,
                            density_probes=1, density_steps=5)
    missed = int((~ds["bottom_converged"].values).sum())
    assert missed > 0 and ds["top_converged"].all()
    assert ds.attrs["not_converged"] == {"top": 0, "bottom": missed}
    summary = hessian_markdown(ds)
    assert f"NOT CONVERGED**: bottom {missed}" in summary and "every eigenpair" not in summary


@pytest.mark.parametrize(("name", "value"), [("trace_matvecs", 2), ("density_probes", 0), ("bottom_tol", 0.0),
                                             ("layer_tol", float("nan")), ("top", 0)])
def test_bad_settings_raise_before_any_product(name, value):
    problem = mlp_problem(n=24)
    with pytest.raises(ValueError, match=name):
        hessian_report(problem, **{name: value})
