"""The Hessian spectrum report against the dense Hessian of a small model."""

from __future__ import annotations

import torch

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
