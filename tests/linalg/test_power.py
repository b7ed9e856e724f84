"""Deflated power iteration: the reference baseline."""

from __future__ import annotations

import numpy as np
import torch
from linalg_cases import random_symmetric

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.linalg import deflated_power_iteration


def test_power_iteration_baseline():
    rng = np.random.default_rng(4)
    lam = np.r_[np.geomspace(10, 1, 5), rng.uniform(0, 0.5, 95)]
    A = random_symmetric(lam, rng)
    es = top_eigenspace(MatrixOperator(A), 3, tol=1e-3, method="power")
    assert es.method == "power"
    assert np.allclose(es.values.numpy(), np.sort(lam)[::-1][:3], rtol=1e-2)


def test_power_iteration_respects_its_budget():
    rng = np.random.default_rng(4)
    A = random_symmetric(np.r_[np.geomspace(10, 1, 5), rng.uniform(0, 0.5, 95)], rng)
    op = MatrixOperator(A)
    es = deflated_power_iteration(op, 3, tol=1e-3, generator=torch.Generator().manual_seed(0),
                                  budget=7, iters=100, change_tol=1e-12, start=op.num_matvecs)
    assert es.num_matvecs == op.num_matvecs == 7 and es.cost == 7.0
    assert np.all(np.diff(es.values.numpy()) <= 0) and np.isnan(es.miss_probability)
