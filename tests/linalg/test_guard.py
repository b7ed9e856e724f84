"""The missed-eigenvalue guard, the Christoffel bound and the miss probability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linalg_cases import check_certified, random_symmetric, spectrum

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.linalg import (
    KrylovRun,
    christoffel_kernel,
    miss_probability,
    missed_eigenvalue_guard,
    thick_restart_lanczos,
)


@pytest.mark.parametrize("kind", ["degenerate", "bulk"])
def test_guard_catches_missed_eigenvalues(kind):
    """Without the guard a single Krylov sequence misses copies / bulk values."""
    rng = np.random.default_rng(0)
    A = random_symmetric(spectrum(kind, 300, rng), rng)
    ref = np.sort(np.linalg.eigvalsh(A))[::-1][:20]
    unguarded = top_eigenspace(MatrixOperator(A), 20, tol=1e-3, guard_steps=0)
    assert not unguarded.all_converged  # uncertified, and says so
    guarded = top_eigenspace(MatrixOperator(A), 20, tol=1e-3)
    check_certified(guarded, A, 20, 1e-3)
    if kind == "bulk":  # measured: residuals < tol, yet an eigenvalue skipped
        assert float(unguarded.residuals.max()) <= 1e-3
        assert np.abs(unguarded.values.numpy() - ref).max() > 1e-3 * abs(ref[0])


def test_guard_repairs_a_skipped_top_eigenvalue():
    """Pairs 2..4 of a diagonal operator handed in as a run: the guard finds
    λ_1 above θ_D + tol·|θ_1|, merges it with the exact residual, and passes
    on the next round."""
    lam = torch.cat([torch.tensor([10.0, 5.0, 4.0, 3.0]), torch.linspace(0.0, 1.0, 96)])
    A = torch.diag(lam).double()
    E = torch.eye(100, dtype=torch.float64)
    run = KrylovRun(lam[1:4].double(), E[:, 1:4], torch.zeros(3, dtype=torch.float64),
                    torch.zeros(100, 1, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64),
                    torch.diag(lam[1:4]).double())
    op = MatrixOperator(A)
    out = missed_eigenvalue_guard(op, run, 3, tol=1e-8, steps=10, max_rounds=4,
                                  max_miss_probability=None, basis_size=20, max_matvecs=400,
                                  generator=torch.Generator().manual_seed(0))
    assert out.repaired and out.certified
    assert 0 <= out.miss_probability <= 1 and out.guard_value <= 4.0 + 1e-8 * 10
    top = out.values.argmax()
    assert float(out.values[top]) == pytest.approx(10.0, abs=1e-6)
    R = A @ out.vectors - out.vectors * out.values
    assert torch.allclose(R.norm(dim=0), out.residuals, atol=1e-9)


def lanczos_T(A: np.ndarray, x0: np.ndarray, steps: int) -> torch.Tensor:
    """Projected matrix of ``steps`` unrestarted Lanczos steps from unit ``x0``."""
    run = thick_restart_lanczos(MatrixOperator(A), 1, torch.as_tensor(x0)[:, None], tol=0.0,
                                basis_size=steps, max_matvecs=steps,
                                generator=torch.Generator().manual_seed(0))
    return run.T


@pytest.mark.parametrize("t", [-1.3, 0.2, 0.97, 1.4, 3.0])
def test_christoffel_kernel_is_the_largest_polynomial_ratio(t):
    """K_j(t) = max p(t)² / ‖p(A) x0‖² over degree < j: φ(t)ᵀ G⁻¹ φ(t) with the
    Gram matrix G of the monomial Krylov vectors."""
    rng = np.random.default_rng(7)
    A = random_symmetric(rng.uniform(-1, 1, 40), rng)
    x0 = rng.standard_normal(40)
    x0 /= np.linalg.norm(x0)
    for j in (1, 2, 4, 6):
        M = np.stack([np.linalg.matrix_power(A, i) @ x0 for i in range(j)], axis=1)
        phi = t ** np.arange(j)
        brute = phi @ np.linalg.solve(M.T @ M, phi)
        assert christoffel_kernel(lanczos_T(A, x0, j), t) == pytest.approx(brute, rel=1e-6)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(kind=st.sampled_from(["spread", "clustered", "degenerate", "negative", "bulk"]),
       steps=st.integers(1, 25), seed=st.integers(0, 2**32 - 1))
def test_no_unseen_eigenvector_outweighs_the_christoffel_bound(kind, steps, seed):
    """(vᵀx0)² · K_j(λ) ≤ 1 for every eigenpair above the run's top Ritz
    value (= 1 where it converged): what makes the guard's miss probability
    a bound."""
    rng = np.random.default_rng(seed)
    A = random_symmetric(spectrum(kind, 80, rng), rng)
    x0 = rng.standard_normal(80)
    x0 /= np.linalg.norm(x0)
    T = lanczos_T(A, x0, steps)
    top = float(torch.linalg.eigvalsh(T)[-1])
    w, V = np.linalg.eigh(A)
    ratio = [c * c * christoffel_kernel(T, max(float(value), top))
             for value, c in zip(w, V.T @ x0) if value >= top - 1e-12 * abs(top)]
    assert max(ratio, default=0.0) <= 1 + 1e-8


def test_miss_probability_is_the_law_of_a_random_component():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((50_000, 30))
    c2 = x[:, 0] ** 2 / (x**2).sum(axis=1)
    for level in (1e-4, 1e-3, 1e-2, 0.1):
        p = miss_probability(1 / level, 30)
        assert abs(np.mean(c2 <= level) - p) <= 4 * np.sqrt(p * (1 - p) / x.shape[0]) + 1e-4
    assert miss_probability(0.5, 30) == 1.0 and miss_probability(np.inf, 30) == 0.0


def test_miss_probability_reported_and_targeted():
    """Reported by default; with a target the guard stops once the bound
    meets it, and a target out of reach is not certified."""
    rng = np.random.default_rng(9)
    A = random_symmetric(np.r_[10.0 - np.arange(5), rng.uniform(0, 1, 295)], rng)
    short = top_eigenspace(MatrixOperator(A), 5, tol=1e-6, guard_steps=4)
    long = top_eigenspace(MatrixOperator(A), 5, tol=1e-6, guard_steps=12)
    assert 0 < long.miss_probability < short.miss_probability <= 1
    targeted = top_eigenspace(MatrixOperator(A), 5, tol=1e-6, guard_steps=40, max_miss_probability=1e-3)
    check_certified(targeted, A, 5, 1e-6)
    assert targeted.miss_probability <= 1e-3
    assert targeted.num_matvecs < long.num_matvecs - 12 + 40  # stopped before the cap
    missed = top_eigenspace(MatrixOperator(A), 5, tol=1e-6, guard_steps=2, max_miss_probability=1e-9)
    assert missed.miss_probability > 1e-9 and not missed.converged.any()
    unguarded = top_eigenspace(MatrixOperator(A), 5, tol=1e-6, guard_steps=0)
    assert np.isnan(unguarded.miss_probability)


def test_guard_runs_all_its_steps_at_a_loose_tolerance():
    """At tol 0.1 the guard's own top Ritz pair converges within 3 steps; a
    guard that stopped there passed with a miss bound of 1 and skipped an
    eigenvalue above θ_D + tol·|θ_1|. Run out, it finds and repairs it."""
    rng = np.random.default_rng(11)
    A = random_symmetric(spectrum("spread", 300, rng), rng)
    es = top_eigenspace(MatrixOperator(A), 5, tol=1e-1)
    check_certified(es, A, 5, 1e-1)
    assert es.miss_probability < 0.1
    bare = top_eigenspace(MatrixOperator(A), 5, tol=1e-1, guard_steps=0)
    assert es.num_matvecs >= bare.num_matvecs + 10


