"""Problem: losses, gradients and exact HVPs against dense ground truth."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from curvprobe import Problem
from curvprobe.core.problem import HVP_MODES, _hvp_batched_double_backward, hvp_kernel
from curvprobe.criteria.engine import subspace_derivatives

from conftest import dense_hessian, mlp_problem


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_matches_dense_hessian(small_problems, name, mode):
    problem = small_problems[name]
    assert problem.num_params <= 3000
    gen = torch.Generator().manual_seed(1)
    for k in (1, problem.num_samples // 2, problem.num_samples):
        H = dense_hessian(problem, k)
        V = torch.randn(problem.num_params, 5, generator=gen, dtype=torch.float64)
        assert rel_err(problem.hvp(V, k, mode=mode), H @ V) <= 1e-10
        assert rel_err(problem.hvp(V[:, 0], k, mode=mode), H @ V[:, 0]) <= 1e-10


def test_hvp_least_squares_closed_form():
    """Linear least squares: ℓ_i = ½ (xᵢᵀw − yᵢ)², H^(k) = XₖᵀXₖ / k, exactly."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(50, generator=gen, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double().eval()
    problem = Problem(model, lambda out, t: 0.5 * (out[:, 0] - t) ** 2, X, y, batch_size=8)
    V = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    for k in (1, 9, 50):
        H = X[:k].T @ X[:k] / k
        for mode in HVP_MODES:
            assert rel_err(problem.hvp(V, k, mode=mode), H @ V) <= 1e-12
        w = problem.params
        g = X[:k].T @ (X[:k] @ w - y[:k]) / k
        assert rel_err(problem.gradient(k=k), g) <= 1e-12
        assert torch.isclose(problem.loss(k=k), 0.5 * ((X[:k] @ w - y[:k]) ** 2).mean(), rtol=1e-14)


def test_start_range_and_point(small_problems):
    problem = small_problems["mlp"]
    w = problem.params + 0.1
    H = dense_hessian(Problem(problem.model, problem.loss_fn, problem.inputs, problem.targets), None)
    del H
    f = lambda x: problem.chunk_losses(x, 5, 9).sum() / 4  # noqa: E731
    H59 = torch.func.hessian(f)(w)
    v = torch.ones(problem.num_params, dtype=torch.float64)
    assert rel_err(problem.hvp(v, 9, w, start=5), H59 @ v) <= 1e-10
    losses = problem.per_sample_losses(w, start=5, stop=9)
    assert losses.dtype == torch.float64 and losses.shape == (4,)
    assert torch.allclose(losses, problem.chunk_losses(w, 5, 9))


def test_chunking_does_not_change_results():
    a, b = mlp_problem(batch_size=1), mlp_problem(batch_size=100)
    v = torch.randn(a.num_params, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert rel_err(a.hvp(v, 17), b.hvp(v, 17)) <= 1e-13
    assert rel_err(a.gradient(k=17), b.gradient(k=17)) <= 1e-13


@given(st.integers(1, 24), st.integers(0, 2**31 - 1), st.floats(-3, 3))
def test_hvp_linear_and_symmetric(k, seed, alpha):
    problem = mlp_problem()
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.randn(2, problem.num_params, generator=gen, dtype=torch.float64)
    Hu, Hv = problem.hvp(u, k), problem.hvp(v, k)
    assert torch.allclose(problem.hvp(alpha * u + v, k), alpha * Hu + Hv, rtol=1e-10, atol=1e-10)
    assert abs(float(u @ Hv - v @ Hu)) <= 1e-10 * (1 + float(u @ Hv).__abs__())


def test_float32_model_accumulates_in_float64():
    problem = mlp_problem()
    p32 = Problem(problem.model.float(), problem.loss_fn, problem.inputs[0].float(), problem.targets)
    problem.model.double()
    assert p32.dtype == torch.float32
    v = torch.randn(p32.num_params, dtype=torch.float64)
    out = p32.hvp(v)
    assert out.dtype == torch.float64
    assert rel_err(out, problem.hvp(v)) <= 1e-4


def test_model_not_mutated():
    problem = mlp_problem()
    before = [p.clone() for p in problem.model.parameters()]
    problem.hvp(torch.ones(problem.num_params, dtype=torch.float64), w=problem.params + 1)
    assert all(torch.equal(a, b) for a, b in zip(before, problem.model.parameters()))
    assert not problem.model.training


@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_into_a_reused_buffer(mode):
    """``out=`` takes the product (earlier contents overwritten, a strided
    column slice too) and is what is returned; a wrong buffer is refused."""
    problem = mlp_problem()
    N = problem.num_params
    V = torch.randn(N, 3, dtype=torch.float64)
    ref = problem.hvp(V, 20, mode=mode)
    buffer = torch.full((N, 5), 7.0, dtype=torch.float64)
    got = problem.hvp(V, 20, mode=mode, out=buffer[:, 1:4])
    assert got.data_ptr() == buffer[:, 1:4].data_ptr()
    assert torch.allclose(buffer[:, 1:4], ref, rtol=0, atol=1e-13) and bool((buffer[:, 0] == 7).all())
    with pytest.raises(ValueError, match="out must be a float64"):
        problem.hvp(V, out=torch.zeros(N, 3))
    with pytest.raises(ValueError, match="out must be a float64"):
        problem.hvp(V[:, 0], out=torch.zeros(N, 1, dtype=torch.float64))


# ------------------------------------------------------------------ bad input
def test_bad_vectors():
    problem = mlp_problem()
    N = problem.num_params
    with pytest.raises(ValueError, match="shape"):
        problem.hvp(torch.ones(N + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        problem.hvp(torch.ones(N, 2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        problem.hvp(torch.ones(N, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor"):
        problem.hvp([1.0] * N)
    if torch.device("meta") != problem.device:
        with pytest.raises(ValueError, match="is on meta"):
            problem.hvp(torch.ones(N, dtype=torch.float64, device="meta"))


@pytest.mark.parametrize("k", [0, -1, 25, 1000])
def test_bad_k(k):
    problem = mlp_problem()
    with pytest.raises(ValueError, match="k must be in"):
        problem.hvp(torch.ones(problem.num_params, dtype=torch.float64), k)
    with pytest.raises(ValueError, match="k must be in"):
        problem.loss(k=k)


def test_scalar_loss_fn_is_refused():
    problem = mlp_problem()
    with pytest.raises(ValueError, match="reduction='none'"):  # at construction, not at the first HVP
        Problem(problem.model, lambda out, t: nn.functional.cross_entropy(out, t),
                problem.inputs, problem.targets)


def test_non_finite_losses_are_refused():
    problem = mlp_problem()
    bad = Problem(problem.model, lambda out, t: torch.log(out[:, 0] * 0), problem.inputs, problem.targets)
    with pytest.raises(FloatingPointError, match="non-finite"):
        bad.per_sample_losses()
    with pytest.raises(FloatingPointError, match="non-finite"):
        bad.hvp(torch.ones(bad.num_params, dtype=torch.float64), mode="double_backward")


@pytest.mark.parametrize("layer", [nn.Dropout(0.1), nn.BatchNorm1d(5)])
def test_training_mode_with_stochastic_layers_is_refused(layer):
    model = nn.Sequential(layer, nn.Linear(5, 3)).double().train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        Problem(model, lambda o, t: o.sum(1), torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4))
    assert model.training  # not silently switched


def test_mismatched_sample_counts():
    model = nn.Linear(2, 1).eval()
    with pytest.raises(ValueError, match="number of samples"):
        Problem(model, lambda o, t: o[:, 0], torch.zeros(4, 2), torch.zeros(5))


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
def test_subspace_derivatives_match_hvps(small_problems, name):
    problem = small_problems[name]
    U, _ = torch.linalg.qr(torch.randn(problem.num_params, 3, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(2)))
    idx = [0, 3, problem.num_samples - 1]
    g, H = subspace_derivatives(problem, U, idx)
    assert g.shape == (3, 3) and H.shape == (3, 3, 3)
    for j, i in enumerate(idx):
        assert rel_err(g[j], U.T @ problem.gradient(k=i + 1, start=i)) <= 1e-10
        assert rel_err(H[j], U.T @ problem.hvp(U, i + 1, start=i)) <= 1e-10
    with pytest.raises(ValueError, match="sample indices"):
        subspace_derivatives(problem, U, [problem.num_samples])


def test_losses_at_many_points(small_problems):
    problem = small_problems["gpt"]
    W = problem.params + 0.01 * torch.randn(5, problem.num_params, dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(0))
    L = problem.per_sample_losses_at(W, start=1, stop=9, point_batch=2)
    for s in range(5):
        assert torch.allclose(L[s], problem.per_sample_losses(W[s], start=1, stop=9), rtol=1e-13)


def test_auto_kernel_batches_the_second_backward_on_one_sample():
    """``"auto"`` takes the batched double backward for VMAP_MIN_VECTORS (4)
    to batch_size columns on a one-sample range only; the product is the
    dense one either way."""
    def picked(m: int, samples: int) -> bool:
        return hvp_kernel("auto", m, 8, samples)[0] is _hvp_batched_double_backward

    assert [picked(m, 1) for m in (1, 3, 4, 8, 9)] == [False, False, True, True, False]
    assert not picked(4, 2) and not picked(4, 0)
    assert hvp_kernel("double_backward", 4, 8, 1)[0] is not _hvp_batched_double_backward
    problem = mlp_problem()
    V = torch.randn(problem.num_params, 5, dtype=torch.float64)
    assert torch.allclose(problem.hvp(V, 4, start=3), dense_hessian(problem, 4, start=3) @ V, atol=1e-12)
