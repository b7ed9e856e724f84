"""The guard's repair solves only the missed pairs; the certificate is stated at a miss bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from linalg_cases import random_symmetric

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.core.operators import DeflatedOperator
from curvprobe.linalg import KrylovRun, missed_eigenvalue_guard, thick_restart_lanczos
from curvprobe.linalg._krylov import random_unit

D, TOL = 8, 1e-6


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A rotated spectrum: 10 spread top eigenvalues over a dense bulk in [0, 1]."""
    rng = np.random.default_rng(seed)
    lam = np.r_[10.0 - 0.7 * np.arange(10), rng.uniform(0.0, 1.0, 190)]
    return random_symmetric(lam, rng), np.sort(lam)[::-1]


def run_without_top(A: np.ndarray) -> KrylovRun:
    """Pairs 2..D+1 of ``A``, exact, handed in as a run that skipped λ_1."""
    w, V = np.linalg.eigh(A)
    w, V = torch.as_tensor(w[::-1].copy()), torch.as_tensor(V[:, ::-1].copy())
    n = A.shape[0]
    return KrylovRun(w[1:D + 1], V[:, 1:D + 1], torch.zeros(D, dtype=torch.float64),
                     torch.zeros(n, 1, dtype=torch.float64), torch.zeros(D, 1, dtype=torch.float64),
                     torch.diag(w[1:D + 1]))


def test_a_missed_top_eigenvalue_is_repaired_for_less_than_a_full_re_solve():
    """The guard finds λ_1 above θ_D + tol·|θ_1| and solves for it (and one
    more) in the complement: fewer products than the D-pair re-solve of the
    complement from the same start, which the repair did before. The merged
    set is orthonormal, its residuals are the true ones and its top D values
    are the dense ones."""
    A, lam = planted()
    op = MatrixOperator(A)
    out = missed_eigenvalue_guard(op, run_without_top(A), D, tol=TOL, steps=10, max_rounds=4,
                                  max_miss_probability=None, basis_size=3 * D,
                                  max_matvecs=2000, generator=torch.Generator().manual_seed(0))
    spent = op.num_matvecs
    assert out.repaired and out.certified
    assert out.values.numel() < 2 * D  # only the missed pairs were merged, not D more
    U = out.vectors
    assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-12)
    true = (torch.as_tensor(A) @ U - U * out.values).norm(dim=0)
    assert torch.allclose(true, out.residuals, rtol=1e-6, atol=1e-12)
    assert float(true.max()) <= TOL * lam[0]
    top = out.values.sort(descending=True).values[:D].numpy()
    assert np.abs(top - lam[:D]).max() <= TOL * lam[0]

    # what a full re-solve of D pairs in the complement costs from a comparable start
    full_op = MatrixOperator(A)
    V = run_without_top(A).vectors
    x0 = random_unit(A.shape[0], torch.Generator().manual_seed(1), full_op.device, V)[:, None]
    thick_restart_lanczos(DeflatedOperator(full_op, V), D, x0, tol=TOL, basis_size=3 * D,
                          max_matvecs=2000, generator=torch.Generator().manual_seed(0), scale=lam[1])
    assert spent < full_op.num_matvecs


def test_repaired_vectors_are_reorthogonalised_with_exact_residuals():
    """On a bulk in [0.9, 1] deflated to 0 a repair's Krylov vectors drift
    into span(U) (the run's polynomial grows at the shift); merged, they are
    orthogonal to U again and their stated residuals are the true ones."""
    rng = np.random.default_rng(0)
    A = random_symmetric(rng.uniform(0.9, 1.0, 300), rng)
    es = top_eigenspace(MatrixOperator(A), 20, tol=1e-3)
    U = es.vectors
    assert torch.allclose(U.T @ U, torch.eye(20, dtype=torch.float64), atol=1e-10)
    true = (torch.as_tensor(A) @ U - U * es.values).norm(dim=0) / es.scale
    assert torch.allclose(true, es.residuals, rtol=1e-9, atol=1e-13)
    ref = np.sort(np.linalg.eigvalsh(A))[::-1][:20]
    assert np.abs(es.values.numpy() - ref).max() <= 1e-3 * ref[0]


def test_certified_only_at_a_stated_miss_bound():
    """``converged`` is the residual test with the guard; ``certified`` needs
    a stated bound and the guard's bound at or below it."""
    A, lam = planted(3)
    free = top_eigenspace(MatrixOperator(A), D, tol=TOL)
    assert free.all_converged and math.isnan(free.miss_bound) and not free.certified
    bounded = top_eigenspace(MatrixOperator(A), D, tol=TOL, guard_steps=40, max_miss_probability=0.05)
    assert bounded.certified and bounded.miss_bound == 0.05 and bounded.miss_probability <= 0.05
    assert np.abs(bounded.values.numpy() - lam[:D]).max() <= TOL * lam[0]
    with pytest.warns(UserWarning, match="not converged and certified"):
        short = top_eigenspace(MatrixOperator(A), D, tol=TOL, guard_steps=2, max_miss_probability=1e-6)
    assert float(short.residuals.max()) <= TOL  # converged residuals...
    assert short.miss_probability > 1e-6 and not short.certified  # ...but not certified at 1e-6
