"""Inputs, targets and per-sample extras as researchers have them: dicts, tuples, weights, no targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvprobe import Problem
from curvprobe.criteria.engine import subspace_derivatives


class DictModel(nn.Module):
    """``model(x=…, scale=…)``: a linear map of x times a per-sample scale."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * scale[:, None]


def _data(n: int = 9, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    W = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    return X, Y, W


def test_weighted_mse_hessian_equals_the_closed_form():
    # ℓ_i(θ) = w_i ‖A x_i + b − y_i‖²: the Hessian of the mean is (2/n) Σ w_i [x_i; 1][x_i; 1]ᵀ ⊗ I_2
    X, Y, W = _data()
    model = nn.Linear(3, 2).double()
    loss = lambda out, batch: batch.extras["weight"] * ((out - batch.targets) ** 2).sum(1)  # noqa: E731
    problem = Problem(model, loss, X, Y, extras={"weight": W}, batch_size=4)
    assert problem.loss_input == "batch"
    Z = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    C = 2 * (W[:, None, None] * Z[:, :, None] * Z[:, None, :]).mean(0)  # (4, 4)
    # flat order: weight (2, 3) row-major, then bias (2,)
    dense = torch.zeros(8, 8, dtype=torch.float64)
    for r in range(2):
        idx = [3 * r, 3 * r + 1, 3 * r + 2, 6 + r]
        dense[torch.tensor(idx)[:, None], torch.tensor(idx)[None, :]] = C
    torch.testing.assert_close(problem.hvp(torch.eye(8, dtype=torch.float64)), dense, rtol=1e-12, atol=1e-14)
    # per-sample Hessians inside span(e_0, e_1, e_2) (the first row of A): 2 w_i x_i x_iᵀ
    _, H = subspace_derivatives(problem, torch.eye(8, dtype=torch.float64)[:, :3], range(5))
    expected = 2 * W[:5, None, None] * X[:5, :, None] * X[:5, None, :]
    torch.testing.assert_close(H, expected, rtol=1e-12, atol=1e-14)


def test_dict_inputs_tuple_targets_and_no_targets():
    X, Y, W = _data()
    scale = torch.linspace(0.5, 1.5, len(X), dtype=torch.float64)
    model = DictModel()
    inputs = {"x": X, "scale": scale}
    pair = lambda out, t: t[1] * ((out - t[0]) ** 2).sum(1)  # noqa: E731  targets = (Y, W)
    a = Problem(model, pair, inputs, (Y, W), batch_size=4)
    b = Problem(model, lambda out, batch: batch.extras["w"] * ((out - batch.targets) ** 2).sum(1),
                inputs, Y, extras={"w": W}, batch_size=2)
    v = torch.randn(a.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.hvp(v), b.hvp(v), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.per_sample_losses(), b.per_sample_losses(), rtol=1e-13, atol=0)
    U = torch.linalg.qr(torch.randn(a.num_params, 2, dtype=torch.float64))[0]
    Ha, Hb = subspace_derivatives(a, U, range(9))[1], subspace_derivatives(b, U, range(9))[1]
    torch.testing.assert_close(Ha, Hb, rtol=1e-12, atol=1e-14)
    energy = Problem(model, lambda out, batch: (out**2).sum(1), inputs)  # self-supervised: no targets
    assert energy.targets is None and energy.per_sample_losses().shape == (9,)


@pytest.mark.parametrize(("loss", "hint"), [
    (lambda out, t: ((out - t) ** 2).mean(), "reduction='none'"),
    (lambda out, t: ((out - t) ** 2).sum(1, keepdim=True), "squeeze"),
    (lambda out, t: (out - t) ** 2, "mean(dim=(1,))"),
])
def test_loss_shape_is_checked_at_construction_with_a_fitting_hint(loss, hint):
    X, Y, _ = _data()
    with pytest.raises(ValueError, match=hint.replace("(", r"\(").replace(")", r"\)")):
        Problem(nn.Linear(3, 2).double(), loss, X, Y)


def test_mismatched_extras_and_unusable_devices_are_one_line_errors():
    X, Y, W = _data()
    with pytest.raises(ValueError, match="number of samples"):
        Problem(nn.Linear(3, 2).double(), lambda o, b: o.sum(1), X, Y, extras={"w": W[:4]})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            Problem(nn.Linear(3, 2).double(), lambda o, t: ((o - t) ** 2).sum(1), X, Y, device="cuda")
    with pytest.raises(TypeError, match="tensors"):
        Problem(nn.Linear(3, 2).double(), lambda o, t: ((o - t) ** 2).sum(1), X, [1, 2, 3])
