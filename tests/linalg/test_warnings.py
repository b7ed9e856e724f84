"""What a user is told when an eigensolve cannot deliver what was asked."""

from __future__ import annotations

import warnings

import pytest
import torch

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.linalg import NotConverged, ToleranceBelowPrecision

from conftest import mlp_problem


def _spectrum_matrix(n: int = 60, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    return Q @ torch.diag(torch.linspace(1.0, 2.0, n, dtype=torch.float64)) @ Q.T  # a dense bulk


def test_budget_running_out_warns_and_flags():
    with pytest.warns(NotConverged, match="budget of 15 products ran out"):
        es = top_eigenspace(MatrixOperator(_spectrum_matrix()), 10, max_matvecs=15, tol=1e-8)
    assert not es.all_converged


def test_a_certified_solve_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        es = top_eigenspace(MatrixOperator(torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64))), 3)
    assert es.all_converged


def test_tolerance_below_the_dtype_warns():
    problem = mlp_problem(n=12)
    p32 = type(problem)(problem.model.float(), problem.loss_fn, problem.inputs[0].float(), problem.targets)
    with pytest.warns(ToleranceBelowPrecision, match="float64 problem"):
        top_eigenspace(p32.hessian_operator(), 2, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ToleranceBelowPrecision)
        top_eigenspace(problem.hessian_operator(), 2, tol=1e-8)  # float64: resolved


def test_a_problem_instead_of_an_operator_says_what_to_pass():
    with pytest.raises(TypeError, match=r"problem.hessian_operator\(k\)"):
        top_eigenspace(mlp_problem(n=8), 3)
    with pytest.raises(TypeError, match="MatrixOperator"):
        top_eigenspace(torch.eye(4), 2)
