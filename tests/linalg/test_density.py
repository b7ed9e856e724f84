"""Stochastic Lanczos quadrature against dense spectra: exact moments of
each probe's measure, invariant subspaces, no ghost eigenvalues, and the
Wasserstein-1 distance to a dense Hessian spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from linalg_cases import random_symmetric

from curvprobe import MatrixOperator, Problem
from curvprobe.linalg import spectral_density
from curvprobe.linalg.density import gaussian_smoothing, slq_nodes
from curvprobe.zoo.models import MLP, MLPConfig, sample_cross_entropy


def test_quadrature_reproduces_the_probe_moments():
    """Gauss quadrature with s nodes is exact for degree < 2s: Σ τ² θ^k = vᵀ A^k v."""
    rng = np.random.default_rng(0)
    A = random_symmetric(rng.uniform(-1, 1, 80), rng)
    V = torch.as_tensor(rng.standard_normal((80, 3)))
    V = V / V.norm(dim=0)
    s = 6
    theta, tau2 = slq_nodes(MatrixOperator(A), V, s, torch.Generator().manual_seed(0))
    At = torch.as_tensor(A)
    for k in range(2 * s):
        exact = (V * (torch.linalg.matrix_power(At, k) @ V)).sum(dim=0)
        assert torch.allclose((tau2 * theta**k).sum(dim=1), exact, rtol=1e-9, atol=1e-11)
    assert torch.allclose(tau2.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_invariant_subspace_keeps_the_quadrature_exact():
    """Five distinct eigenvalues and 20 steps: the Krylov space closes after
    five, the rest of the nodes carry no weight, and the measure is exact."""
    rng = np.random.default_rng(1)
    lam = np.repeat([-2.0, -0.5, 0.0, 1.0, 3.0], 6)
    A = random_symmetric(lam, rng)
    sd = spectral_density(MatrixOperator(A), num_probes=4, lanczos_steps=20)
    assert sd.num_matvecs == 4 * 20 and sd.lanczos_steps == 20
    heavy = sd.nodes[sd.weights > 1e-10]
    assert np.allclose(np.unique(np.round(heavy.numpy(), 8)), np.unique(lam))
    for value in np.unique(lam):
        mass = float(sd.weights[(sd.nodes - value).abs() < 1e-8].sum())
        assert mass > 0.02  # each probe sees every eigenspace
    assert sd.wasserstein(lam) < 0.35  # four probes of a 30-point measure


def test_no_ghost_copies_of_a_converged_eigenvalue():
    """Full reorthogonalisation: an isolated top eigenvalue appears once per
    probe, not once per restart of the recurrence's loss of orthogonality."""
    rng = np.random.default_rng(2)
    lam = np.r_[100.0, rng.uniform(0, 1, 299)]
    A = random_symmetric(lam, rng)
    sd = spectral_density(MatrixOperator(A), num_probes=3, lanczos_steps=120)
    near = (sd.nodes - 100.0).abs() < 1e-6
    assert near.sum(dim=1).tolist() == [1, 1, 1]


def test_smoothed_density_and_bandwidth():
    rng = np.random.default_rng(3)
    lam = rng.uniform(-1, 2, 400)
    A0 = random_symmetric(lam, rng)
    sd = spectral_density(MatrixOperator(A0), num_probes=5, lanczos_steps=30)
    width = float(sd.nodes.max() - sd.nodes.min())
    assert sd.bandwidth == pytest.approx(width / 30)
    area = float(torch.trapezoid(sd.density, sd.grid))
    assert area == pytest.approx(1.0, abs=1e-3)
    assert float(sd.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    # unbiased: over 20 seeds the mean density is the dense spectrum smoothed
    # by the same kernel (≈ 1/3 inside [-1, 2]); one seed of 5 probes is
    # within the probes' fluctuation, ~√(2/(p·N·mass)) relative
    grid = sd.grid
    dense = gaussian_smoothing(torch.as_tensor(lam), torch.full((400,), 1 / 400, dtype=torch.float64),
                               grid, sd.bandwidth)
    A = MatrixOperator(A0)
    mean = torch.stack([spectral_density(A, num_probes=5, lanczos_steps=30, seed=s, grid=grid,
                                         bandwidth=sd.bandwidth).density for s in range(20)]).mean(dim=0)
    assert float((mean - dense).abs().max()) < 0.04 * float(dense.max())
    assert float((sd.density - dense).abs().max()) < 0.25 * float(dense.max())
    grid = torch.linspace(-1, 2, 7, dtype=torch.float64)
    fixed = spectral_density(MatrixOperator(random_symmetric(lam, rng)), num_probes=2, lanczos_steps=10,
                             grid=grid, bandwidth=0.2)
    assert fixed.bandwidth == 0.2 and torch.equal(fixed.grid, grid)
    one = gaussian_smoothing(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]), 2.0)
    assert float(one) == pytest.approx(1 / (2.0 * math.sqrt(2 * math.pi)))


@pytest.fixture(scope="module")
def mlp2k():
    """An MLP with N = 2,067 parameters on 256 samples and its dense Hessian spectrum."""
    gen = torch.Generator().manual_seed(0)
    model = MLP(MLPConfig(widths=(16, 48, 24, 3)), seed=0).double().eval()
    X = torch.randn(256, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (256,), generator=gen)
    problem = Problem(model, sample_cross_entropy, X, y, batch_size=256)
    f = lambda w: problem.chunk_losses(w, 0, 256).mean()  # noqa: E731
    H = torch.func.jacfwd(torch.func.grad(f))(problem.params)
    return problem, np.linalg.eigvalsh(H.numpy())


def test_slq_matches_the_dense_hessian_spectrum(mlp2k):
    """The issue's check: W1(SLQ, dense eigenvalues) / spectral width ≤ 0.02
    at 10 probes × 80 steps, N ≈ 2k."""
    problem, lam = mlp2k
    assert 1900 <= problem.num_params <= 2200
    sd = spectral_density(problem.hessian_operator(), num_probes=10, lanczos_steps=80, seed=0)
    assert sd.wasserstein(lam) / (lam.max() - lam.min()) <= 0.02
    assert sd.moment(1) * problem.num_params == pytest.approx(lam.sum(), rel=0.3)


def test_bad_arguments():
    op = MatrixOperator(np.eye(4))
    for kwargs in ({"num_probes": 0}, {"lanczos_steps": 1.5}, {"bandwidth": -1.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            spectral_density(op, **kwargs)
