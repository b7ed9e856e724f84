"""The measurement's arithmetic: all-k increments, running mean ± SE, the estimator functions."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch

from curvprobe.criteria import engine, spec
from curvprobe.criteria.engine import (
    SUBSPACE_CELLS,
    all_k_increments,
    increments,
    noise,
    per_k_increments,
    running_mean_stderr,
    subspace_estimator,
)

from conftest import mlp_problem


def test_all_k_engine_matches_per_k_loop():
    problem = mlp_problem(n=40)
    ks = [1, 2, 5, 17, 39]
    draw = lambda s0, s1: 0.05 * torch.stack(  # noqa: E731
        [noise(0, 9, s, (problem.num_params,)) for s in range(s0, s1)])
    fast = all_k_increments(problem, ks, draw, 6, point_batch=4)
    slow = per_k_increments(problem, ks, draw, 6, point_batch=4)
    assert fast.shape == (6, 5)
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-15)


def test_increment_identity():
    losses = torch.tensor([1.0, 3.0, 2.0, 7.0], dtype=torch.float64)
    d = increments(losses, [1, 2, 3])
    L = lambda k: losses[:k].mean()  # noqa: E731
    assert torch.allclose(d, torch.stack([L(2) - L(1), L(3) - L(2), L(4) - L(3)]), rtol=1e-15)


def test_running_mean_stderr_against_two_pass_with_a_large_offset():
    # cv_mc adds GM to every draw: an offset 1e6 times the spread cancelled the
    # one-pass variance Σx² − n·mean² entirely (standard error 0 at small S)
    gen = torch.Generator().manual_seed(0)
    x = 1e6 + 1e-3 * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    counts = [2, 4, 16, 64]
    mean, se = running_mean_stderr(x, counts)
    for i, S in enumerate(counts):
        ref = x[:S].numpy()
        np.testing.assert_allclose(mean[i].numpy(), ref.mean(0), rtol=1e-15)
        np.testing.assert_allclose(se[i].numpy(), ref.std(0, ddof=1) / np.sqrt(S), rtol=1e-6)


def test_every_registered_estimator_has_its_engine_function():
    for name, entry in spec.ESTIMATORS.items():
        if entry.space == spec.SUBSPACE:
            assert name in SUBSPACE_CELLS
        elif entry.space == spec.FULL_SPACE:
            assert name in engine.FULL_SPACE_PROBES or name in engine.FULL_SPACE_CLOSED_FORMS
    with pytest.raises(ValueError, match="not a subspace estimator"):
        subspace_estimator("full_mc")


def test_estimator_terms_on_known_draws():
    a = torch.tensor(0.5, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    B = torch.tensor([[2.0, 0.5], [0.5, -1.0]], dtype=torch.float64)
    z = torch.tensor([[0.1, 0.2], [-0.3, 0.1], [0.0, -0.2]], dtype=torch.float64)
    q = engine.surrogate_values(a, c, B, z)
    expected = torch.stack([a + c @ zi + 0.5 * zi @ B @ zi for zi in z])
    torch.testing.assert_close(q, expected, rtol=1e-15, atol=0)
    delta = q + 0.01
    draws = engine.SubspaceDraws(a, c, B, 0.1, z, q, delta, 2.0)
    value, stderr = engine.estimate(SUBSPACE_CELLS["direct_mc"](draws))
    assert value == pytest.approx(float((delta**2).mean()), rel=1e-15)
    assert stderr == pytest.approx(float((delta**2).std() / 3**0.5), rel=1e-12)
    gm_value, gm_stderr = engine.estimate(SUBSPACE_CELLS["gm"](draws))
    assert gm_stderr == 0.0
    cv_value, _ = engine.estimate(SUBSPACE_CELLS["cv_mc"](draws))
    assert cv_value == pytest.approx(gm_value + float((delta**2 - q**2).mean()), rel=1e-14)


def test_spec_module_imports_no_torch():
    tree = ast.parse(inspect.getsource(spec))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported and "numpy" not in imported
