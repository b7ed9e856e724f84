"""top_eigenspace end to end: Lanczos against numpy.linalg.eigh and dense
Hessians, argument checks, and the operators it runs on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from linalg_cases import check_certified, random_symmetric, spectrum

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.core.operators import DeflatedOperator

from conftest import dense_hessian


# derandomized: the guard's random start defeats it with a small probability
# (curvprobe.linalg.guard; frequencies in docs/performance.md); CI must not
# depend on drawing one
@settings(derandomize=True, max_examples=150)
@example(kind="degenerate", n=136, D=10, seed=194)  # defeated an 8-step guard
@example(kind="degenerate", n=186, D=3, seed=252)  # defeated an 8-step guard
@given(kind=st.sampled_from(["spread", "clustered", "degenerate", "negative", "bulk"]),
       n=st.integers(60, 200), D=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_lanczos_matches_eigh(kind, n, D, seed):
    rng = np.random.default_rng(seed)
    A = random_symmetric(spectrum(kind, n, rng), rng)
    es = top_eigenspace(MatrixOperator(A), D, tol=1e-6, seed=seed % 1000)
    check_certified(es, A, D, 1e-6)


def test_thick_restart_with_small_basis():
    rng = np.random.default_rng(1)
    A = random_symmetric(spectrum("spread", 300, rng), rng)
    es = top_eigenspace(MatrixOperator(A), 10, tol=1e-8, basis_size=14, max_matvecs=5000)
    check_certified(es, A, 10, 1e-8)


def test_budget_exhausted_is_reported():
    rng = np.random.default_rng(2)
    A = random_symmetric(spectrum("bulk", 300, rng), rng)
    es = top_eigenspace(MatrixOperator(A), 10, tol=1e-10, max_matvecs=30)
    assert es.num_matvecs <= 30 + 1
    assert not es.all_converged


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 2.0])
def test_bad_max_miss_probability(p):
    with pytest.raises(ValueError, match="max_miss_probability"):
        top_eigenspace(MatrixOperator(np.diag(np.arange(5.0))), 2, max_miss_probability=p)


def test_scipy_adapter_counts_and_agrees():
    rng = np.random.default_rng(5)
    A = random_symmetric(spectrum("spread", 80, rng), rng)
    op = MatrixOperator(A)
    x = rng.standard_normal((80, 3))
    assert np.allclose(op.to_scipy() @ x, A @ x)
    assert np.allclose(op.to_scipy().matvec(x[:, 0]), A @ x[:, 0])
    assert op.num_matvecs == 4


def test_deflated_operator():
    rng = np.random.default_rng(6)
    A = random_symmetric(spectrum("spread", 50, rng), rng)
    V, _ = np.linalg.qr(rng.standard_normal((50, 4)))
    P = np.eye(50) - V @ V.T
    op = DeflatedOperator(MatrixOperator(A), torch.as_tensor(V))
    x = torch.randn(50, dtype=torch.float64)
    assert torch.allclose(op.matvec(x), torch.as_tensor(P @ A @ P) @ x)


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_hessian_eigenspace_matches_dense(small_problems, name):
    problem = small_problems[name]
    H = dense_hessian(problem).numpy()
    es = top_eigenspace(problem.hessian_operator(), 5, tol=1e-8)
    check_certified(es, H, 5, 1e-8)


@pytest.mark.parametrize("D", [0, -1, 2.5, 80])
def test_bad_D(D):
    A = np.eye(80)
    with pytest.raises(ValueError, match="1 <= D < N"):
        top_eigenspace(MatrixOperator(A), D)


def test_bad_method_and_tol():
    A = np.eye(10)
    with pytest.raises(ValueError, match="unknown method"):
        top_eigenspace(MatrixOperator(A), 2, method="arnoldi")
    with pytest.raises(ValueError, match="tol"):
        top_eigenspace(MatrixOperator(A), 2, tol=0.0)
