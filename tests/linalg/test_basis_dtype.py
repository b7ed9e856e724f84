"""A Krylov basis stored in float32: float64 arithmetic, an honest certificate
from real products on the returned float64 vectors, and the memory model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linalg_cases import check_certified, check_certified_end, random_symmetric, spectrum

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.core.operators import LinearOperator
from curvprobe.linalg import eigensolver_memory, explicit_pairs
from curvprobe.linalg._krylov import basis_t_matmul

from conftest import dense_hessian


class Recording(LinearOperator):
    """A dense operator that records whether each column it is applied to is
    exactly representable in float32 (a stored float32 basis vector)."""

    def __init__(self, A: np.ndarray) -> None:
        super().__init__(A.shape[0])
        self.A = torch.as_tensor(A)
        self.float32_columns = self.other_columns = 0

    def _matmat(self, V):
        exact = (V.float().double() == V).all(dim=0)
        self.float32_columns += int(exact.sum())
        self.other_columns += int((~exact).sum())
        return self.A @ V


@settings(derandomize=True, max_examples=60, deadline=None)
@given(kind=st.sampled_from(["spread", "clustered", "degenerate", "negative", "bulk"]),
       which=st.sampled_from(["largest", "smallest", "both_ends", "magnitude"]),
       tol=st.sampled_from([1e-3, 1e-6, 1e-9, 1e-12]), D=st.integers(1, 8),
       seed=st.integers(0, 2**32 - 1))
def test_float32_converged_only_where_the_true_residual_is_within_tol(kind, which, tol, D, seed):
    """Against the float64 operator: every pair flagged converged has a true
    relative residual ≤ tol, and the reported residual is the true one — also
    at tolerances below float32 round-off, where the recurrence's estimate
    is not."""
    rng = np.random.default_rng(seed)
    A = random_symmetric(spectrum(kind, 120, rng), rng)
    es = top_eigenspace(MatrixOperator(A), D, tol=tol, which=which, basis_dtype=torch.float32,
                        seed=seed % 100, max_matvecs=600)
    assert es.vectors.dtype == torch.float64
    true = (torch.as_tensor(A) @ es.vectors - es.vectors * es.values).norm(dim=0) / es.scale
    assert torch.allclose(true, es.residuals, rtol=1e-6, atol=1e-15)
    assert bool((true[es.converged] <= tol).all())


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_float32_basis_is_stored_and_applied_in_float32(which):
    """The Lanczos products are taken of float32-exact vectors (the stored
    basis), the certificate's D products of float64 ones (the guard's of
    deflated, projected ones); the result is certified against eigh."""
    rng = np.random.default_rng(1)
    A = random_symmetric(spectrum("spread", 200, rng), rng)
    op = Recording(A)
    bare = top_eigenspace(op, 6, tol=1e-6, which=which, basis_dtype=torch.float32, guard_steps=0)
    assert op.float32_columns == bare.num_matvecs - 6 and op.other_columns == 6
    ref = Recording(A)
    top_eigenspace(ref, 6, tol=1e-6, which=which, guard_steps=0)
    assert ref.float32_columns == 0
    es = top_eigenspace(MatrixOperator(A), 6, tol=1e-6, which=which, basis_dtype=torch.float32)
    check_certified_end(es, A, 6, 1e-6, which)


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_float32_basis_on_hessians(small_problems, name):
    problem = small_problems[name]
    es = top_eigenspace(problem.hessian_operator(), 5, tol=1e-6, basis_dtype=torch.float32)
    check_certified(es, dense_hessian(problem).numpy(), 5, 1e-6)


def test_float32_warm_start_and_block():
    rng = np.random.default_rng(2)
    A = random_symmetric(spectrum("clustered", 180, rng), rng)
    A2 = A + 1e-4 * random_symmetric(rng.standard_normal(180), rng)
    cold = top_eigenspace(MatrixOperator(A), 6, tol=1e-6, basis_dtype=torch.float32, method="block")
    check_certified(cold, A, 6, 1e-6)
    warm = top_eigenspace(MatrixOperator(A2), 6, tol=1e-6, basis_dtype=torch.float32, init=cold)
    check_certified(warm, A2, 6, 1e-6)
    with pytest.raises(ValueError, match="keep_basis"):
        top_eigenspace(MatrixOperator(A), 6, basis_dtype=torch.float32, keep_basis=True)
    with pytest.raises(ValueError, match="basis_dtype"):
        top_eigenspace(MatrixOperator(A), 6, basis_dtype=torch.float16)


def test_float32_gram_products_accumulate_in_float64():
    """Qᵀ W of a float32 basis equals the float64 product of its exactly
    converted entries (chunked), not a float32 product."""
    gen = torch.Generator().manual_seed(0)
    Q = torch.randn(50_000, 7, generator=gen).float()
    W = torch.randn(50_000, 3, generator=gen, dtype=torch.float64)
    exact = Q.double().T @ W
    assert torch.allclose(basis_t_matmul(Q, W), exact, rtol=1e-12, atol=1e-12)
    assert not torch.allclose((Q.T @ W.float()).double(), exact, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_explicit_pairs_residuals_are_real(dtype):
    """Orthonormalised float64 vectors, Rayleigh quotients and residuals of
    exactly those vectors from p products in blocks; a float32 input is
    copied, a float64 one overwritten."""
    rng = np.random.default_rng(3)
    A = random_symmetric(spectrum("spread", 90, rng), rng)
    X = torch.as_tensor(np.linalg.eigh(A)[1][:, -6:] + 1e-3 * rng.standard_normal((90, 6))).to(dtype)
    op = MatrixOperator(A)
    run = explicit_pairs(op, X.clone(), "largest")
    assert op.num_matvecs == 6
    U = run.vectors
    assert U.dtype == torch.float64 and U.is_contiguous()
    assert torch.allclose(U.T @ U, torch.eye(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(run.values, (U * (torch.as_tensor(A) @ U)).sum(dim=0), rtol=1e-12)
    R = torch.as_tensor(A) @ U - U * run.values
    assert torch.allclose(R.norm(dim=0), run.residuals, rtol=1e-9, atol=1e-14)
    assert torch.all(run.values[:-1] >= run.values[1:])
    low = explicit_pairs(MatrixOperator(A), X.clone(), "smallest")
    assert torch.equal(low.values, run.values.flip(0))


def test_memory_model_formula():
    """The phases of the model: at the default basis (m = 3 D) the peak is
    the repair in float64 and the end of the solve in float32 (a float32
    repair gets the rows its vectors displaced); the basis alone dominates
    when m ≫ D, and float32 halves it."""
    N, m, D = 124_000_000, 60, 20
    f64 = eigensolver_memory(N, m, torch.float64, D=D)
    f32 = eigensolver_memory(N, m, torch.float32, D=D)
    assert f64 == (D + 1) * N * 8 + (m + 1) * N * 8 + (D + 3) * N * 8 == 840 * N
    assert f32 == (m + 1 + D) * N * 4 + 2 * N * 8 == 340 * N
    # the float32 guard is streamed: its steps cost no memory; the float64 one stores them
    assert eigensolver_memory(N, m, torch.float32, D=D, guard_steps=500) == f32
    assert eigensolver_memory(N, m, torch.float64, D=D, guard_steps=500) == (D + 1 + 501 + 3) * N * 8
    big = 2000
    ratio = eigensolver_memory(N, big, torch.float32, D=D) / eigensolver_memory(N, big, torch.float64, D=D)
    assert 0.45 < ratio < 0.55
    assert eigensolver_memory(N, m, torch.float32, D=D, hvp_bytes=7) == f32 + 7
    assert eigensolver_memory(N, m, D=D, keep_basis=True) == f64 + 2 * m * N * 8
    with pytest.raises(ValueError, match="basis_dtype"):
        eigensolver_memory(N, m, torch.float16)


BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "eigensolver_memory.py"


def test_measured_peak_follows_the_memory_model():
    """Peak resident memory of a solve that fills its basis (thick restarts),
    in a fresh process (``benchmarks/eigensolver_memory.py``: live tensors,
    every large allocation mapped), against the model — whose peak phase is
    a repair these solves do not need — and the float32 basis's saving."""
    grew = {}
    for name in ("float64", "float32"):
        out = subprocess.run([sys.executable, str(BENCHMARK), "--worker", "1000000", name],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["converged"]
        grew[name], model = result["grew"], result["model"]
        assert 0.75 * model <= grew[name] <= 1.05 * model, (name, grew[name] / model)
    assert grew["float32"] < 0.55 * grew["float64"]
