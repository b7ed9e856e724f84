"""Thick-restart block Lanczos: the Lanczos relation and its free residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linalg_cases import random_symmetric, spectrum

from curvprobe import MatrixOperator
from curvprobe.linalg import thick_restart_lanczos


@pytest.mark.parametrize(("b", "basis_size"), [(1, 60), (1, 12), (3, 15)])
def test_lanczos_relation_and_free_residuals(b, basis_size):
    """The kept basis satisfies A Q = Q T + F E_lastᵀ, with and without
    thick restarts, single-vector and block, and the residuals read off it
    without a product are the true ones: A U − U Θ = F Sᵀ."""
    rng = np.random.default_rng(12)
    A = random_symmetric(spectrum("spread", 120, rng), rng)
    At = torch.as_tensor(A)
    op = MatrixOperator(A)
    run = thick_restart_lanczos(op, 4, torch.as_tensor(rng.standard_normal((120, b))), tol=1e-8,
                                basis_size=basis_size, max_matvecs=90,
                                generator=torch.Generator().manual_seed(0), keep_basis=True)
    Q = run.basis
    assert op.num_matvecs <= 90 + b
    assert Q.shape[1] <= max(basis_size, 4 + 2 * b) and run.T.shape == (Q.shape[1], Q.shape[1])
    assert torch.allclose(Q.T @ Q, torch.eye(Q.shape[1], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(run.image, At @ Q, atol=1e-10)
    assert torch.allclose(Q.T @ At @ Q, run.T, atol=1e-10)
    assert torch.all(run.values[:-1] >= run.values[1:])
    R = At @ run.vectors - run.vectors * run.values
    assert torch.allclose(R, run.F @ run.S.T, atol=1e-10)
    assert torch.allclose(R.norm(dim=0), run.residuals, atol=1e-10)


def test_lanczos_stops_when_asked():
    rng = np.random.default_rng(13)
    A = random_symmetric(spectrum("spread", 80, rng), rng)
    seen = []

    def until(T, top):
        seen.append((T.shape[0], top))
        return T.shape[0] == 5

    run = thick_restart_lanczos(MatrixOperator(A), 1, torch.ones(80, 1, dtype=torch.float64),
                                tol=0.0, basis_size=40, max_matvecs=40,
                                generator=torch.Generator().manual_seed(0), until=until)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5] and run.T.shape == (5, 5)
    assert seen[-1][1] == float(run.values[0]) == pytest.approx(float(torch.linalg.eigvalsh(run.T)[-1]))
