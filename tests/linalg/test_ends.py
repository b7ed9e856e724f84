"""Both ends of the spectrum: which = "smallest" | "both_ends" | "magnitude"
against numpy.linalg.eigh and dense Hessians, with the same certificate and
guard semantics as the top end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linalg_cases import check_certified_end, random_symmetric, reference, spectrum

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.linalg import christoffel_kernel, guard_levels, ritz_order

from conftest import dense_hessian, mlp_problem

ENDS = ["smallest", "both_ends", "magnitude"]


@settings(derandomize=True, max_examples=120, deadline=None)
@given(kind=st.sampled_from(["spread", "clustered", "degenerate", "negative", "bulk"]),
       which=st.sampled_from(ENDS), n=st.integers(60, 160), D=st.integers(1, 10),
       seed=st.integers(0, 2**32 - 1))
def test_ends_match_eigh(kind, which, n, D, seed):
    rng = np.random.default_rng(seed)
    A = random_symmetric(spectrum(kind, n, rng), rng)
    es = top_eigenspace(MatrixOperator(A), D, tol=1e-6, seed=seed % 1000, which=which)
    check_certified_end(es, A, D, 1e-6, which)


@pytest.mark.parametrize("which", ENDS)
def test_ends_on_repeated_and_mirrored_spectra(which):
    """Copies of a repeated eigenvalue at the bottom (the guard must find
    them) and a spectrum symmetric about 0 (magnitude picks both ends)."""
    rng = np.random.default_rng(3)
    lam = np.r_[[-6.0] * 3, [-5.0] * 3, [6.0, 5.5], rng.uniform(-1, 1, 242)]
    A = random_symmetric(lam, rng)
    es = top_eigenspace(MatrixOperator(A), 8, tol=1e-6, which=which)
    check_certified_end(es, A, 8, 1e-6, which)


def test_smallest_of_a_psd_operator_is_relative_to_its_norm():
    """The bottom of a PSD spectrum sits near 0: residuals are relative to
    s ≈ ‖A‖ (the largest Ritz value seen), not to the tiny eigenvalues."""
    rng = np.random.default_rng(4)
    lam = np.r_[np.geomspace(100, 1, 10), rng.uniform(0, 1e-3, 190)]
    A = random_symmetric(lam, rng)
    es = top_eigenspace(MatrixOperator(A), 5, tol=1e-6, which="smallest")
    # the bulk [0, 1e-3] is 10 tol·s wide: the guard's level lies below 0
    check_certified_end(es, A, 5, 1e-6, "smallest", resolved=False)
    assert es.scale == pytest.approx(100, rel=1e-6)
    fine = top_eigenspace(MatrixOperator(A), 5, tol=1e-9, which="smallest", max_matvecs=4000)
    check_certified_end(fine, A, 5, 1e-9, "smallest")
    largest = top_eigenspace(MatrixOperator(A), 5, tol=1e-6)
    assert largest.scale == pytest.approx(100, rel=1e-9) and largest.which == "largest"


@pytest.mark.parametrize(("name", "shift"), [("mlp", 0.0), ("mlp_saddle", 0.3)])
def test_smallest_five_of_a_hessian_match_dense(name, shift):
    """The issue's check: the 5 smallest eigenvalues vs the dense Hessian to
    ≤ 1e-6 ‖H‖, at w* and at a point with negative curvature."""
    problem = mlp_problem()
    w = problem.params + shift * torch.randn(problem.num_params, generator=torch.Generator().manual_seed(0),
                                             dtype=torch.float64)
    H = torch.func.jacfwd(torch.func.grad(lambda x: problem.chunk_losses(x, 0, 24).mean()))(w)
    lam = np.linalg.eigvalsh(H.numpy())
    es = top_eigenspace(problem.hessian_operator(w=w), 5, tol=1e-8, which="smallest")
    check_certified_end(es, H.numpy(), 5, 1e-8, "smallest")
    assert np.abs(es.values.numpy() - np.sort(lam)[:5][::-1]).max() <= 1e-6 * np.abs(lam).max()
    if shift:
        assert lam[0] < -1e-3 * np.abs(lam).max()  # genuinely negative curvature
        assert float(es.values.min()) < 0


def test_dense_hessian_fixture_both_ends(small_problems):
    problem = small_problems["gpt"]
    H = dense_hessian(problem).numpy()
    es = top_eigenspace(problem.hessian_operator(), 6, tol=1e-8, which="both_ends")
    check_certified_end(es, H, 6, 1e-8, "both_ends")


def test_guard_levels_and_order():
    values = torch.tensor([5.0, 3.0, -1.0, -4.0], dtype=torch.float64)
    assert guard_levels(values, 2, 0.1, 10.0, "largest") == (-math.inf, 3.0 + 1.0)
    assert guard_levels(values, 2, 0.1, 10.0, "smallest") == (-1.0 - 1.0, math.inf)
    assert guard_levels(values, 3, 0.1, 10.0, "both_ends") == (-4.0 - 1.0, 3.0 + 1.0)
    assert guard_levels(values, 1, 0.1, 10.0, "both_ends") == (-math.inf, 6.0)
    assert guard_levels(values, 3, 0.1, 10.0, "magnitude") == (-4.0, 4.0)
    theta = torch.tensor([4.0, 1.0, 0.0, -2.0, -5.0])
    assert ritz_order(theta, "both_ends").tolist() == [0, 4, 1, 3, 2]
    assert ritz_order(theta, "magnitude").tolist() == [4, 0, 3, 1, 2]
    assert ritz_order(theta, "smallest").tolist() == [4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="unknown which"):
        ritz_order(theta, "top")


@pytest.mark.parametrize("t", [-1.3, -1.05])
def test_christoffel_kernel_below_the_spectrum_bounds_unseen_components(t):
    """The bound the bottom end of a two-sided guard uses: K_j grows below the
    smallest Ritz value, and (vᵀx0)² K_j(λ) ≤ 1 for eigenvalues below it."""
    rng = np.random.default_rng(7)
    A = random_symmetric(rng.uniform(-1, 1, 40), rng)
    x0 = rng.standard_normal(40)
    x0 /= np.linalg.norm(x0)
    from curvprobe.linalg import thick_restart_lanczos

    for j in (2, 4, 8):
        T = thick_restart_lanczos(MatrixOperator(A), 1, torch.as_tensor(x0)[:, None], tol=0.0,
                                  basis_size=j, max_matvecs=j,
                                  generator=torch.Generator().manual_seed(0)).T
        M = np.stack([np.linalg.matrix_power(A, i) @ x0 for i in range(j)], axis=1)
        phi = t ** np.arange(j)
        assert christoffel_kernel(T, t) == pytest.approx(phi @ np.linalg.solve(M.T @ M, phi), rel=1e-6)
        bottom = float(torch.linalg.eigvalsh(T)[0])
        w, V = np.linalg.eigh(A)
        ratios = [c * c * christoffel_kernel(T, min(value, bottom)) for value, c in zip(w, V.T @ x0)
                  if value <= bottom]
        assert max(ratios, default=0.0) <= 1 + 1e-8


def test_two_sided_guard_repairs_a_missed_bottom_eigenvalue():
    """A run handed in without the bottom eigenvalue: the two-sided guard sees
    it below ℓ_lo, repairs it with exact residuals and then passes."""
    from curvprobe.linalg import KrylovRun, missed_eigenvalue_guard

    lam = torch.cat([torch.tensor([-10.0, -5.0, -4.0]), torch.linspace(0.0, 1.0, 97)]).double()
    A, E = torch.diag(lam), torch.eye(100, dtype=torch.float64)
    run = KrylovRun(lam[1:3], E[:, 1:3], torch.zeros(2, dtype=torch.float64),
                    torch.zeros(100, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64),
                    torch.diag(lam[1:3]), scale=10.0)
    out = missed_eigenvalue_guard(MatrixOperator(A), run, 2, tol=1e-8, steps=10, max_rounds=4,
                                  max_miss_probability=None, basis_size=20, max_matvecs=400,
                                  generator=torch.Generator().manual_seed(0), which="smallest",
                                  scale=10.0)
    assert out.repaired and out.certified and 0 <= out.miss_probability <= 1
    assert float(out.values.min()) == pytest.approx(-10.0, abs=1e-6)
    assert out.guard_low >= -4.0 - 1e-8 * 10
    R = A @ out.vectors - out.vectors * out.values
    assert torch.allclose(R.norm(dim=0), out.residuals, atol=1e-9)


@pytest.mark.parametrize("which", ENDS)
def test_warm_start_at_the_other_ends(which):
    rng = np.random.default_rng(8)
    lam = spectrum("negative", 200, rng)
    A = random_symmetric(lam, rng)
    A2 = A + 1e-4 * random_symmetric(rng.standard_normal(200), rng)
    cold = top_eigenspace(MatrixOperator(A), 4, tol=1e-6, which=which)
    warm = top_eigenspace(MatrixOperator(A2), 4, tol=1e-6, which=which, init=cold)
    check_certified_end(warm, A2, 4, 1e-6, which)
    assert np.allclose(np.sort(reference(np.linalg.eigvalsh(A2), 4, which)), np.sort(warm.values.numpy()),
                       atol=1e-5)


def test_bad_which_and_power():
    A = MatrixOperator(np.diag(np.arange(10.0)))
    with pytest.raises(ValueError, match="unknown which"):
        top_eigenspace(A, 2, which="bottom")
    with pytest.raises(ValueError, match="power"):
        top_eigenspace(A, 2, which="smallest", method="power")
