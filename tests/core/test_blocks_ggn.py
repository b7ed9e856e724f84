"""Parameter blocks and the generalized Gauss–Newton operator against dense
ground truth: block Hessians are the submatrices of the full dense Hessian;
the GGN against closed forms (softmax regression, least squares) and against
Jacobians with the closed-form output Hessian of the cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from curvprobe import Problem, top_eigenspace
from curvprobe.core.operators import BlockHessianOperator, GGNOperator, parameter_block
from curvprobe.zoo.models import MLP, MLPConfig, sample_cross_entropy

from conftest import dense_hessian, gpt_problem, mlp_problem


def indices(problem: Problem, names) -> torch.Tensor:
    slices = problem.layer_slices()
    return torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names])


def dense_of(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=torch.float64))


@pytest.mark.parametrize(("make", "params"), [
    (gpt_problem, "blocks.0.attn.c_q.weight"),
    (gpt_problem, "blocks.0.mlp.*"),
    (gpt_problem, ["wte.weight", "lm_head.weight"]),
    (mlp_problem, lambda name: name.endswith("bias")),
])
def test_block_hessian_is_the_dense_submatrix(make, params):
    problem = make()
    op = problem.hessian_operator(params=params)
    assert isinstance(op, BlockHessianOperator)
    idx = indices(problem, op.block.names)
    H = dense_hessian(problem)
    assert op.shape == (idx.numel(), idx.numel())
    assert torch.allclose(dense_of(op), H[idx][:, idx], rtol=0, atol=1e-12)
    # the maps between block and flat vectors
    v = torch.randn(op.shape[0], dtype=torch.float64)
    flat = op.block.scatter(v)
    off = ~torch.isin(torch.arange(problem.num_params), idx)
    assert torch.equal(op.block.take(flat), v) and not flat[off].any()
    base = problem.functional_params(problem.params)
    named = op.block.named(v, base)
    assert all(torch.equal(named[n], base[n]) for n in base if n not in op.block.names)
    assert torch.equal(torch.cat([named[n].reshape(-1) for n in op.block.names]), v)


@pytest.mark.parametrize("kind", ["hessian_operator", "ggn_operator"])
def test_block_products_differentiate_the_block_alone(kind):
    """A product on the output layer's block reaches no other weight: it
    costs a small fraction of the FLOPs of a product on all parameters (a
    block vector embedded into the whole flat vector would cost as much)."""
    problem = gpt_problem()

    def flops(params):
        op = getattr(problem, kind)(params=params)
        V = torch.randn(op.shape[0], 2, dtype=torch.float64)
        with FlopCounterMode(display=False) as counter:
            op.matmat(V)
        return counter.get_total_flops()

    assert flops("lm_head.weight") < 0.3 * flops(None)


def test_block_at_another_point_and_fewer_samples():
    problem = mlp_problem()
    w = problem.params + 0.1
    op = problem.hessian_operator(12, w, start=2, params="layers.1.*")
    H = torch.func.jacfwd(torch.func.grad(lambda x: problem.chunk_losses(x, 2, 12).mean()))(w)
    idx = indices(problem, op.block.names)
    assert torch.allclose(dense_of(op), H[idx][:, idx], atol=1e-12)


def test_block_by_module_solved_by_top_eigenspace():
    """A submodule selects its parameters by identity; the block's top
    eigenpairs are those of the dense submatrix."""
    problem = gpt_problem()
    op = problem.hessian_operator(params=problem.model.lm_head)
    assert op.block.names == ("lm_head.weight",)
    full = top_eigenspace(op, 4, tol=1e-10)
    idx = indices(problem, op.block.names)
    ref = np.linalg.eigvalsh(dense_hessian(problem)[idx][:, idx].numpy())[::-1][:4]
    assert np.allclose(full.values.numpy(), ref, rtol=0, atol=1e-9 * abs(ref[0]))


def test_parameter_block_errors():
    problem = mlp_problem()
    slices = problem.layer_slices()
    with pytest.raises(ValueError, match="no trainable parameter matches"):
        parameter_block(problem.model, slices, "nope.*")
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        parameter_block(problem.model, slices, lambda name: False)
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        parameter_block(problem.model, slices, nn.Linear(2, 2))


# --------------------------------------------------------------------- GGN
def test_ggn_of_softmax_regression_is_the_closed_form():
    """A linear model with cross-entropy: G = H = mean_i (diag p_i − p_i p_iᵀ) ⊗ x_i x_iᵀ."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=gen)
    model = nn.Linear(4, 3, bias=False).double().eval()
    problem = Problem(model, sample_cross_entropy, X, y, batch_size=7)
    P = torch.softmax(X @ model.weight.detach().T, dim=1)
    ref = sum(torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(x, x)) for p, x in zip(P, X)) / 30
    G = dense_of(problem.ggn_operator())
    assert torch.allclose(G, ref, atol=1e-13)
    assert torch.allclose(G, dense_hessian(problem), atol=1e-13)


def test_ggn_of_least_squares_is_the_closed_form():
    """A linear model with squared error Σ_c (f_c − y_c)²: G = H = (2/n) Σ I ⊗ x xᵀ."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(25, 5, generator=gen, dtype=torch.float64)
    Y = torch.randn(25, 2, generator=gen, dtype=torch.float64)
    model = nn.Linear(5, 2, bias=False).double().eval()
    problem = Problem(model, lambda out, t: ((out - t) ** 2).sum(dim=1), X, Y, batch_size=10)
    ref = torch.kron(torch.eye(2, dtype=torch.float64), 2 * X.T @ X / 25)
    assert torch.allclose(dense_of(problem.ggn_operator()), ref, atol=1e-12)


def mlp_ggn_reference(problem: Problem, k: int) -> torch.Tensor:
    """(1/k) Σ J_iᵀ (diag p_i − p_i p_iᵀ) J_i with J_i by jacrev per sample."""
    X, w = problem.inputs[0], problem.params.double()

    def logits(x_flat, xi):
        return torch.func.functional_call(problem.model, problem.unflatten(x_flat), (xi[None],))[0]

    total = 0
    for xi in X[:k]:
        J = torch.func.jacrev(logits)(w, xi)
        p = torch.softmax(logits(w, xi), dim=0)
        total = total + J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
    return total / k


def test_ggn_of_an_mlp_matches_jacobians_and_is_psd():
    problem = mlp_problem()
    ref = mlp_ggn_reference(problem, 20)
    G = dense_of(problem.ggn_operator(20))
    assert torch.allclose(G, ref, atol=1e-12)
    lam = torch.linalg.eigvalsh(G)
    assert float(lam.min()) >= -1e-12 * float(lam.max())
    low = top_eigenspace(problem.ggn_operator(20), 3, tol=1e-8, which="smallest")
    assert low.all_converged and float(low.values.min()) >= -1e-8 * float(lam.max())
    H = dense_hessian(problem, 20)
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-6  # the Hessian is indefinite here
    # a block of the GGN is the submatrix
    op = problem.ggn_operator(20, params="layers.0.*")
    idx = indices(problem, op.block.names)
    assert isinstance(op, GGNOperator) and torch.allclose(dense_of(op), ref[idx][:, idx], atol=1e-12)


def test_ggn_of_a_transformer_is_psd_and_every_solver_runs_on_it():
    from curvprobe.linalg import spectral_density, trace

    problem = gpt_problem()
    op = problem.ggn_operator()
    G = dense_of(op)
    assert torch.allclose(G, G.T, atol=1e-14)
    lam = np.linalg.eigvalsh(G.numpy())
    assert lam.min() >= -1e-12 * lam.max()
    es = top_eigenspace(op, 5, tol=1e-8)
    assert es.all_converged and np.allclose(es.values.numpy(), lam[::-1][:5], atol=1e-8 * lam.max())
    block = top_eigenspace(op, 5, tol=1e-8, method="block")
    assert block.all_converged and np.allclose(block.values.numpy(), lam[::-1][:5], atol=1e-8 * lam.max())
    assert trace(op, num_matvecs=3 * op.shape[0]).value == pytest.approx(lam.sum(), rel=1e-10)
    sd = spectral_density(op, num_probes=4, lanczos_steps=30)
    assert float(sd.nodes.min()) >= -1e-8 * lam.max()


def test_ggn_with_the_problem_in_float32_accumulates_in_float64():
    gen = torch.Generator().manual_seed(2)
    model = MLP(MLPConfig(widths=(5, 8, 3)), seed=0).eval()
    X = torch.randn(40, 5, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    problem = Problem(model, lambda out, t: F.cross_entropy(out, t, reduction="none"), X, y, batch_size=16)
    v = torch.randn(problem.num_params, dtype=torch.float64)
    out = problem.ggn_operator().matvec(v)
    assert out.dtype == torch.float64
    double = Problem(model.double(), sample_cross_entropy, X.double(), y, batch_size=16)
    ref = mlp_ggn_reference(double, 40) @ v
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
