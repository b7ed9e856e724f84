"""SpectralNewton and SpectralProbe against closed forms.

- a quadratic whose curvature along u_j v_jᵀ is κ σ_j²: one α = 2 step with the
  Newton step's size lands on the minimiser; the best α = 1 step does not;
- least squares with an input covariance built so that h_j = κ σ_j^1.5: the
  probe measures α = 1.5 and ``alpha="measured"`` takes the exact Newton step;
- non-matrix parameters against torch.optim.AdamW; conv kernels; bfloat16;
- state_dict round trips (float32, bfloat16, measured α) continue bit for bit;
- the refresh schedule, parameter groups and every refused input.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from curvprobe import Problem
from curvprobe.optim import ADAMW_RMS, SpectralNewton, SpectralProbe, param_groups, spectral_update


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]


def rms(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x)) / math.sqrt(x.numel())


# --------------------------------------------------------------------------- closed-form quadratic

class SpectralQuadratic:
    """L(W) = ½ Σ_j c_j ⟨u_j v_jᵀ, W − W*⟩² + ½ ‖P⊥(W − W*)‖² with W₀ − W* = Σ_j a_j u_j v_jᵀ.

    The gradient at W₀ is G = Σ_j c_j a_j u_j v_jᵀ, so σ_j = c_j a_j, and the
    curvature along u_j v_jᵀ is c_j. With c_j = κ σ_j² (α = 2) the Newton step
    −Σ_j (σ_j / c_j) u_j v_jᵀ = −(1/κ) U diag(1/σ) Vᵀ lands on W*.
    """

    def __init__(self, sigma=(2.0, 1.1, 0.5, 0.2), kappa: float = 0.7, alpha: float = 2.0,
                 m: int = 6, n: int = 5):
        self.U, self.V = orthonormal(m, len(sigma), 0), orthonormal(n, len(sigma), 1)
        self.sigma = torch.tensor(sigma, dtype=torch.float64)
        self.c = kappa * self.sigma**alpha
        self.a = self.sigma / self.c
        self.W_star = torch.randn(m, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        self.W0 = self.W_star + (self.U * self.a) @ self.V.T

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        E = W - self.W_star
        coords = torch.einsum("mj,mn,nj->j", self.U, E, self.V)
        rest = E - (self.U * coords) @ self.V.T
        return 0.5 * (self.c * coords**2).sum() + 0.5 * (rest**2).sum()


def test_one_alpha_2_step_is_the_newton_step_on_the_quadratic():
    q = SpectralQuadratic()
    W = nn.Parameter(q.W0.clone())
    newton = q.W0 - q.W_star
    opt = SpectralNewton([W], lr=rms(newton) / ADAMW_RMS, alpha=2.0, damping=0.0, momentum=0.0,
                         weight_decay=0.0)
    q.loss(W).backward()
    assert torch.allclose(W.grad, (q.U * q.sigma) @ q.V.T, atol=1e-12)  # σ_j = c_j a_j as built
    opt.step()
    assert float(torch.linalg.matrix_norm(W.detach() - q.W_star)) < 1e-10
    assert float(q.loss(W.detach())) < 1e-20


def test_the_best_muon_step_does_not_reach_the_minimum():
    # along U Vᵀ the best step length is t* = Σ c_j a_j / Σ c_j; the loss left is
    # ½ Σ c_j (a_j − t*)² > 0 — the quadratic tells α = 1 from α = 2
    q = SpectralQuadratic()
    t = float((q.c * q.a).sum() / q.c.sum())
    W = nn.Parameter(q.W0.clone())
    lr = t * math.sqrt(len(q.sigma) / W.numel()) / ADAMW_RMS  # rms(t U Vᵀ) = t √(r / mn)
    opt = SpectralNewton([W], lr=lr, alpha=1.0, damping=0.0, momentum=0.0, weight_decay=0.0)
    q.loss(W).backward()
    opt.step()
    left = float(q.loss(W.detach()))
    assert left == pytest.approx(float(0.5 * (q.c * (q.a - t) ** 2).sum()), rel=1e-10)
    assert left > 0.1 * float(q.loss(q.W0))


# --------------------------------------------------------------------------- measured α, least squares

def least_squares(alpha: float = 1.5, kappa: float = 0.8, m: int = 4, n: int = 6, k: int = 16):
    """nn.Linear(n, m) on ℓ_i = ½‖W x_i − y_i‖², y_i = W* x_i, (1/k) XᵀX = V diag(c) Vᵀ.

    G = (W − W*) V diag(c) Vᵀ; with W₀ − W* = Σ_j a_j u_j v_jᵀ its singular
    triplets are (c_j a_j, u_j, v_j) and h_j = v_jᵀ (XᵀX/k) v_j = c_j. Choosing
    c_j = κ σ_j^α makes α exact.
    """
    sigma = torch.tensor([1.0, 0.55, 0.3, 0.12], dtype=torch.float64)
    U, V = orthonormal(m, m, 10), orthonormal(n, n, 11)
    c = torch.ones(n, dtype=torch.float64)
    c[:m] = kappa * sigma**alpha
    Q = orthonormal(k, n, 12)
    X = math.sqrt(k) * (Q * c.sqrt()) @ V.T
    W_star = torch.randn(m, n, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    W0 = W_star + (U * (sigma / c[:m])) @ V[:, :m].T
    model = nn.Linear(n, m, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(W0)

    def loss_fn(out, y):
        return 0.5 * ((out - y) ** 2).sum(-1)

    def make_problem(net):
        return Problem(net, loss_fn, X, X @ W_star.T, batch_size=k)

    return model, make_problem, W_star, W0


def test_probe_measures_the_built_alpha():
    model, make_problem, *_ = least_squares(alpha=1.5)
    probe = SpectralProbe(model, make_problem, top_k=4)
    fits = probe.measure(["weight"])
    assert fits["weight"].alpha == pytest.approx(1.5, abs=1e-8)
    assert fits["weight"].r2_alpha == pytest.approx(1.0, abs=1e-10)
    assert probe.count == 1 and probe.seconds > 0
    assert probe.history == [fits]


def test_measured_alpha_takes_the_newton_step():
    model, make_problem, W_star, W0 = least_squares(alpha=1.5)
    probe = SpectralProbe(model, make_problem, top_k=4)
    opt = SpectralNewton(model.parameters(), lr=rms(W0 - W_star) / ADAMW_RMS, alpha="measured",
                         damping=0.0, momentum=0.0, weight_decay=0.0, probe=probe)
    problem = make_problem(model)
    model.weight.grad = problem.gradient().view(model.weight.shape)
    opt.step()
    state = opt.state[model.weight]
    assert state["alpha"] == pytest.approx(1.5, abs=1e-8)
    assert state["alpha_raw"] == state["alpha"]
    assert float(torch.linalg.matrix_norm(model.weight.detach() - W_star)) < 1e-8


def test_measured_alpha_is_clipped_and_falls_back():
    model, make_problem, *_ = least_squares(alpha=2.6)
    probe = SpectralProbe(model, make_problem, top_k=4)
    opt = SpectralNewton(model.parameters(), alpha="measured", probe=probe, alpha_bounds=(0.5, 2.0))
    model.weight.grad = torch.ones_like(model.weight)
    opt.step()
    assert opt.state[model.weight]["alpha_raw"] == pytest.approx(2.6, abs=1e-8)
    assert opt.state[model.weight]["alpha"] == 2.0
    # two singular directions: no α fit, the fallback is used
    model2, make_problem2, *_ = least_squares()
    probe2 = SpectralProbe(model2, make_problem2, top_k=2)
    opt2 = SpectralNewton(model2.parameters(), alpha="measured", probe=probe2, alpha_fallback=0.7)
    model2.weight.grad = torch.ones_like(model2.weight)
    opt2.step()
    assert math.isnan(opt2.state[model2.weight]["alpha_raw"])
    assert opt2.state[model2.weight]["alpha"] == 0.7


def test_measurements_follow_the_schedule():
    model, make_problem, *_ = least_squares()
    probe = SpectralProbe(model, make_problem, top_k=4, every=3)
    opt = SpectralNewton(model.parameters(), lr=1e-3, alpha="measured", probe=probe)
    for _ in range(7):
        model.weight.grad = torch.ones_like(model.weight)
        opt.step()
    assert probe.count == 3  # steps 0, 3, 6
    assert opt.state[model.weight]["alpha_age"] == 1


# --------------------------------------------------------------------------- models, dtypes, state

class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.GroupNorm(2, 6)
        self.fc = nn.Linear(6 * 4 * 4 + 4, 5)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.norm(self.conv(x))).flatten(1)
        return self.fc(torch.cat([h, self.emb(tokens)], dim=1))


def batch(seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(8, 1, 4, 4, generator=gen).to(dtype), torch.randint(11, (8,), generator=gen),
            torch.randint(5, (8,), generator=gen))


def train(model: nn.Module, opt: torch.optim.Optimizer, seeds) -> None:
    for seed in seeds:
        x, tokens, y = batch(seed, next(model.parameters()).dtype)
        loss = nn.functional.cross_entropy(model(x, tokens).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_param_groups_split_matrices_from_the_rest():
    model = Net()
    groups = param_groups(model, alpha=1.0)
    assert [id(p) for p in groups[0]["params"]] == [id(model.conv.weight), id(model.fc.weight)]
    assert groups[0]["alpha"] == 1.0
    assert groups[1]["spectral"] is False
    assert {id(p) for p in groups[1]["params"]} == {id(model.emb.weight), id(model.conv.bias),
                                                     id(model.norm.weight), id(model.norm.bias),
                                                     id(model.fc.bias)}


def test_non_matrix_parameters_take_torch_adamw_steps():
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    groups = param_groups(model)
    opt = SpectralNewton(groups, lr=2e-3, weight_decay=0.05, betas=(0.85, 0.98), eps=1e-7)
    rest = param_groups(twin)[1]["params"]
    reference = torch.optim.AdamW(rest, lr=2e-3, weight_decay=0.05, betas=(0.85, 0.98), eps=1e-7,
                                  foreach=False)
    for seed in range(4):
        for net, o in ((model, opt), (twin, reference)):
            x, tokens, y = batch(seed)
            o.zero_grad()
            nn.functional.cross_entropy(net(x, tokens), y).backward()
            o.step()
        # the matrices differ (twin's are not trained), so compare one step from equal points
        with torch.no_grad():
            for p, q in zip(model.parameters(), twin.parameters()):
                if p.dim() >= 2 and p is not model.emb.weight:
                    q.copy_(p)
        for p, q in zip(param_groups(model)[1]["params"], rest):
            assert torch.allclose(p, q, rtol=0, atol=1e-7)


def test_conv_kernel_step_is_the_matrix_step():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3)
    W0 = conv.weight.detach().clone()
    conv.weight.grad = torch.randn_like(conv.weight)
    opt = SpectralNewton([conv.weight], lr=0.1, alpha=2.0, damping=1e-2, momentum=0.0, weight_decay=0.0)
    opt.step()
    expected = W0 - 0.1 * spectral_update(conv.weight.grad.reshape(4, 27), 2.0, 1e-2).reshape(W0.shape)
    assert torch.allclose(conv.weight.detach(), expected, atol=1e-7)


def test_bfloat16_parameters_use_float32_arithmetic_and_state():
    torch.manual_seed(2)
    W = nn.Parameter(torch.randn(8, 6).bfloat16())
    G = torch.randn(8, 6).bfloat16()
    W0 = W.detach().float()
    W.grad = G.clone()
    opt = SpectralNewton([W], lr=0.05, alpha=2.0, momentum=0.9, nesterov=False, weight_decay=0.1)
    opt.step()
    buf = opt.state[W]["momentum_buffer"]
    assert W.dtype == torch.bfloat16 and buf.dtype == torch.float32
    assert torch.equal(buf, 0.1 * G.float())
    expected = (W0 * (1 - 0.05 * 0.1) - 0.05 * spectral_update(buf, 2.0, 1e-2)).bfloat16()
    assert torch.equal(W.detach(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_bit_for_bit(dtype):
    torch.manual_seed(3)
    model = Net().to(dtype)
    opt = SpectralNewton(param_groups(model, alpha=1.3), lr=3e-3)
    train(model, opt, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    clone = Net().to(dtype)
    clone.load_state_dict(saved["model"])
    reopened = SpectralNewton(param_groups(clone, alpha=1.3), lr=3e-3)
    reopened.load_state_dict(saved["opt"])
    for p, q in zip(model.parameters(), clone.parameters()):
        for key, value in opt.state[p].items():
            other = reopened.state[q][key]
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.float32 and torch.equal(value, other), key
            else:
                assert value == other, key
    train(model, opt, range(3, 6))
    train(clone, reopened, range(3, 6))
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_state_dict_round_trip_with_measured_alpha():
    model, make_problem, *_ = least_squares()
    probe = SpectralProbe(model, make_problem, top_k=4, every=2)
    opt = SpectralNewton(model.parameters(), lr=1e-2, alpha="measured", probe=probe)
    grads = [torch.randn(4, 6, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
             for s in range(6)]
    for g in grads[:3]:
        model.weight.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    clone = copy.deepcopy(model)
    clone.load_state_dict(saved["model"])
    reopened = SpectralNewton(clone.parameters(), lr=1e-2, alpha="measured",
                              probe=SpectralProbe(clone, make_problem, top_k=4, every=2))
    reopened.load_state_dict(saved["opt"])
    assert reopened.state[clone.weight]["alpha"] == opt.state[model.weight]["alpha"]
    assert reopened.state[clone.weight]["alpha_age"] == 1
    for g in grads[3:]:
        model.weight.grad, clone.weight.grad = g.clone(), g.clone()
        opt.step()
        reopened.step()
    assert torch.equal(model.weight, clone.weight)


def test_closure_and_parameters_without_gradients():
    torch.manual_seed(4)
    a, b = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3))
    b0 = b.detach().clone()
    opt = SpectralNewton([a, b], lr=1e-2)

    def closure():
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) > 0
    assert torch.equal(b.detach(), b0) and b not in opt.state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_matches_cpu():
    torch.manual_seed(5)
    W = nn.Parameter(torch.randn(16, 9))
    Wc = nn.Parameter(W.detach().cuda())
    G = torch.randn(16, 9)
    for p, g in ((W, G), (Wc, G.cuda())):
        p.grad = g
        SpectralNewton([p], lr=1e-2, alpha=2.0).step()
    assert torch.allclose(W.detach(), Wc.detach().cpu(), atol=1e-6)


def test_refused_inputs():
    model = Net()
    with pytest.raises(ValueError, match="needs probe"):
        SpectralNewton(model.parameters(), alpha="measured")
    with pytest.raises(ValueError, match="alpha must be"):
        SpectralNewton(model.parameters(), alpha=-1.0)
    with pytest.raises(ValueError, match="damping"):
        SpectralNewton(model.parameters(), damping=-1e-3)
    with pytest.raises(ValueError, match="momentum"):
        SpectralNewton(model.parameters(), momentum=1.0)
    with pytest.raises(ValueError, match="alpha_bounds"):
        SpectralNewton(model.parameters(), alpha_bounds=(1.0, 0.5))
    other, make_problem, *_ = least_squares()
    with pytest.raises(ValueError, match="not a trainable parameter of the probe's model"):
        SpectralNewton(model.parameters(), alpha="measured", probe=SpectralProbe(other, make_problem))
    with pytest.raises(ValueError, match="every"):
        SpectralProbe(other, make_problem, every=0)
    emb = nn.Embedding(5, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    sparse = SpectralNewton(emb.parameters(), spectral=False)
    with pytest.raises(RuntimeError, match="sparse"):
        sparse.step()
