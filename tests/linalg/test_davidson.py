"""Warm starts: block Davidson from a previous subspace or a carried basis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linalg_cases import check_certified, random_symmetric, spectrum

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.linalg import block_davidson

from conftest import dense_hessian, mlp_problem


def test_block_davidson_keeps_explicit_residuals():
    """A Q is kept next to Q, and the residuals are explicit: A X − X Θ = F Sᵀ
    with F = R and S = I."""
    rng = np.random.default_rng(14)
    A = random_symmetric(spectrum("spread", 150, rng), rng)
    At = torch.as_tensor(A)
    U0 = torch.as_tensor(np.linalg.eigh(A)[1][:, ::-1][:, :6].copy())
    U0 = U0 + 1e-3 * torch.as_tensor(rng.standard_normal((150, 6)))
    op = MatrixOperator(A)
    run = block_davidson(op, 6, U0, tol=1e-8, basis_size=30, max_matvecs=200,
                         generator=torch.Generator().manual_seed(0), keep_basis=True)
    Q = run.basis
    assert torch.allclose(Q.T @ Q, torch.eye(Q.shape[1], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(run.image, At @ Q, atol=1e-10)
    R = At @ run.vectors - run.vectors * run.values
    assert torch.equal(run.S, torch.eye(6, dtype=torch.float64))
    assert torch.allclose(R, run.F, atol=1e-10)
    assert torch.allclose(R.norm(dim=0), run.residuals, atol=1e-10)
    assert float(run.residuals.max()) <= 1e-8 * float(run.values.abs().max())
    # a start with A U0 known costs no product in its first block
    before = op.num_matvecs
    again = block_davidson(op, 6, Q, image=run.image, tol=1e-8, basis_size=30, max_matvecs=200,
                           generator=torch.Generator().manual_seed(0))
    assert op.num_matvecs == before
    assert torch.allclose(again.values, run.values, rtol=0, atol=1e-12)


def test_warm_start_needs_fewer_matvecs():
    rng = np.random.default_rng(3)
    lam = spectrum("spread", 400, rng)
    A = random_symmetric(lam, rng)
    E = random_symmetric(rng.standard_normal(400), rng)
    A2 = A + 1e-4 * E
    cold = top_eigenspace(MatrixOperator(A), 10, tol=1e-4)
    cold2 = top_eigenspace(MatrixOperator(A2), 10, tol=1e-4)
    warm = top_eigenspace(MatrixOperator(A2), 10, tol=1e-4, init=cold)
    check_certified(warm, A2, 10, 1e-4)
    assert warm.num_matvecs < cold2.num_matvecs


def test_warm_start_from_exact_subspace_is_one_block():
    """An invariant start subspace: one batched Rayleigh–Ritz block plus the guard."""
    rng = np.random.default_rng(4)
    A = random_symmetric(spectrum("spread", 300, rng), rng)
    cold = top_eigenspace(MatrixOperator(A), 8, tol=1e-10)
    warm = top_eigenspace(MatrixOperator(A), 8, tol=1e-6, init=cold, guard_steps=10)
    check_certified(warm, A, 8, 1e-6)
    assert warm.num_matvecs == 8 + 10


def test_warm_start_from_a_far_subspace_costs_one_block_more_than_cold():
    """A subspace that moved far: Davidson gives way to Lanczos after one block."""
    rng = np.random.default_rng(6)
    A = random_symmetric(spectrum("spread", 300, rng), rng)
    A2 = A + 0.3 * random_symmetric(rng.standard_normal(300) / 10, rng)
    start = top_eigenspace(MatrixOperator(A), 8, tol=1e-3)
    cold = top_eigenspace(MatrixOperator(A2), 8, tol=1e-6)
    warm = top_eigenspace(MatrixOperator(A2), 8, tol=1e-6, init=start)
    check_certified(warm, A2, 8, 1e-6)
    assert warm.num_matvecs <= cold.num_matvecs + 8 + 10


@settings(derandomize=True, max_examples=200)
@given(n=st.integers(2, 9), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_warm_start_on_tiny_operators(n, data, seed):
    """Warm starts whose blocks fill the whole space (D up to N − 1)."""
    D = data.draw(st.integers(1, n - 1), label="D")
    rng = np.random.default_rng(seed)
    A = random_symmetric(rng.standard_normal(n), rng)
    A2 = A + data.draw(st.sampled_from([0.0, 1e-6, 1e-2, 1.0]), label="shift") * random_symmetric(
        rng.standard_normal(n), rng)
    start = top_eigenspace(MatrixOperator(A), D, tol=1e-3)
    warm = top_eigenspace(MatrixOperator(A2), D, tol=1e-8, init=start)
    assert torch.isfinite(warm.values).all() and torch.isfinite(warm.vectors).all()
    ref = np.sort(np.linalg.eigvalsh(A2))[::-1][:D]
    assert np.abs(warm.values.numpy() - ref).max() <= 1e-6 * max(abs(ref).max(), 1e-12)


@pytest.mark.parametrize("p", [3, 12])
def test_warm_start_with_fewer_or_more_vectors(p):
    rng = np.random.default_rng(5)
    A = random_symmetric(spectrum("clustered", 250, rng), rng)
    start = top_eigenspace(MatrixOperator(A), p, tol=1e-3).vectors
    A2 = A + 1e-3 * random_symmetric(rng.standard_normal(250), rng)
    warm = top_eigenspace(MatrixOperator(A2), 6, tol=1e-6, init=start)
    check_certified(warm, A2, 6, 1e-6)


def test_carry_derives_the_next_k_from_new_samples_only(small_problems):
    problem = small_problems["mlp"]
    V = torch.randn(problem.num_params, 3, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    op12, op20 = problem.hessian_operator(12), problem.hessian_operator(20)
    image = op20.carry(op12, V, op12.matmat(V))
    assert torch.allclose(image, dense_hessian(problem, 20) @ V, rtol=0, atol=1e-12)
    assert op20.num_matvecs == 0 and op20.cost == pytest.approx(3 * 8 / 20)
    assert op20.carry(op12, V, image, budget=1.0) is None  # 1.2 products over budget
    assert op20.cost == pytest.approx(3 * 8 / 20)
    # only a prefix of the same samples at the same point carries
    shifted = problem.params + 1e-3
    assert torch.equal(op20.carry(problem.hessian_operator(20), V, image), image)
    for other in (problem.hessian_operator(24),
                  problem.hessian_operator(12, start=1), problem.hessian_operator(12, w=shifted),
                  MatrixOperator(torch.eye(problem.num_params))):
        assert problem.hessian_operator(20).carry(other, V, V) is None


@pytest.fixture(scope="module")
def mlp400():
    return mlp_problem(n=400, batch_size=200)


@pytest.mark.parametrize(("k0", "k1"), [(300, 301), (300, 320)])
def test_warm_start_from_a_carried_basis(mlp400, k0, k1):
    """The k0 basis and its image start k1's solve: certified against the
    dense Hessian, cheaper than a warm start from the k0 vectors alone (and
    than half a cold start for one added sample), and it chains."""
    problem, tol = mlp400, 1e-3
    prev = top_eigenspace(problem.hessian_operator(k0), 5, tol=tol, keep_basis=True)
    Q, m = prev.basis, prev.basis.shape[1]
    assert torch.allclose(Q.T @ Q, torch.eye(m, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(prev.basis_image, dense_hessian(problem, k0) @ Q, atol=1e-9)
    cold = top_eigenspace(problem.hessian_operator(k1), 5, tol=tol)
    from_vectors = top_eigenspace(problem.hessian_operator(k1), 5, tol=tol, init=prev.vectors)
    warm = top_eigenspace(problem.hessian_operator(k1), 5, tol=tol, init=prev, keep_basis=True)
    check_certified(warm, dense_hessian(problem, k1).numpy(), 5, tol)
    assert warm.cost == pytest.approx(warm.num_matvecs + m * (k1 - k0) / k1)
    assert cold.cost == cold.num_matvecs
    assert warm.cost < from_vectors.cost
    if k1 == k0 + 1:
        assert warm.cost < 0.5 * cold.cost
    nxt = top_eigenspace(problem.hessian_operator(k1 + 1), 5, tol=tol, init=warm)
    check_certified(nxt, dense_hessian(problem, k1 + 1).numpy(), 5, tol)
    assert nxt.basis is None and cold.basis is None


def test_a_basis_that_cannot_carry_falls_back_to_its_vectors(small_problems):
    problem = small_problems["mlp"]
    prev = top_eigenspace(problem.hessian_operator(12), 5, tol=1e-8, keep_basis=True)
    w = problem.params + 1e-3
    warm = top_eigenspace(problem.hessian_operator(12, w=w), 5, tol=1e-8, init=prev)
    check_certified(warm, torch.func.jacfwd(torch.func.grad(
        lambda x: problem.chunk_losses(x, 0, 12).mean()))(w).numpy(), 5, 1e-8)
