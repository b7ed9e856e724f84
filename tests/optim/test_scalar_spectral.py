"""ScalarSpectral: AdamW with lr · (s_ℓ / s̄)^β per layer.

- the factor formula on hand-made fits (mean, β, clipping, undefined s);
- on a two-layer MLP, the factors equal those computed from an independent
  layer_spectra call, and each step equals torch.optim.AdamW run with the
  scaled learning rates as separate parameter groups;
- β = 0 is AdamW; state_dict round trip; refused inputs.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from curvprobe import Problem
from curvprobe.optim import LayerExponents, ScalarSpectral, SpectralProbe, scalar_factors
from curvprobe.spectral import layer_spectra
from curvprobe.zoo.models import MLP, MLPConfig, sample_cross_entropy


def fit(s: float) -> LayerExponents:
    return LayerExponents(alpha=1.0, r2_alpha=1.0, gamma=1.0, s_hessian=s, top_k=4)


def test_scalar_factors_formula():
    fits = {"a": fit(1.0), "b": fit(3.0), "c": fit(math.nan), "d": fit(2.0)}
    factors = scalar_factors(fits, beta=2.0, bounds=(0.1, 10.0))
    assert set(factors) == {"a", "b", "d"}
    assert factors["a"] == pytest.approx(0.25)  # (1/2)²
    assert factors["b"] == pytest.approx(2.25)  # (3/2)²
    assert factors["d"] == pytest.approx(1.0)
    clipped = scalar_factors(fits, beta=2.0, bounds=(0.5, 2.0))
    assert clipped["a"] == 0.5 and clipped["b"] == 2.0
    assert scalar_factors({"c": fit(math.nan)}, 1.0, (0.1, 10.0)) == {}


def setup(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = MLP(MLPConfig(widths=(6, 12, 10, 4)), seed=seed).double()
    X = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(4, (64,), generator=gen)

    def make_problem(net):
        return Problem(net, sample_cross_entropy, X, y, batch_size=64)

    return model, make_problem, X, y


def step_with(model, opt, X, y):
    opt.zero_grad()
    sample_cross_entropy(model(X), y).mean().backward()
    opt.step()


def test_factors_and_steps_match_adamw_with_scaled_groups():
    model, make_problem, X, y = setup()
    twin = copy.deepcopy(model)
    probe = SpectralProbe(model, make_problem, top_k=4, every=100)
    opt = ScalarSpectral(model.parameters(), probe, lr=1e-2, beta=1.5, weight_decay=0.02)
    step_with(model, opt, X, y)
    # independent reference: layer_spectra on the starting point, AdamW with scaled lr per group
    spectra = layer_spectra(make_problem(twin), top_k=4)
    s = dict(zip(spectra["layer"].values.tolist(), spectra["s_hessian"].values.tolist()))
    assert all(math.isfinite(v) and v > 0 for v in s.values())
    mean = sum(s.values()) / len(s)
    groups = [{"params": [p], "lr": 1e-2 * ((s[name] / mean) ** 1.5 if name in s else 1.0)}
              for name, p in twin.named_parameters()]
    reference = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.02, foreach=False)
    step_with(twin, reference, X, y)
    for name, p in model.named_parameters():
        if name in s:
            assert opt.state[p]["lr_scale"] == pytest.approx((s[name] / mean) ** 1.5, rel=1e-9)
            assert opt.state[p]["s_hessian"] == pytest.approx(s[name], rel=1e-9)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    # the factors differ between layers: the control is not AdamW in disguise
    scales = [opt.state[p]["lr_scale"] for p in model.parameters() if p.dim() == 2]
    assert max(scales) / min(scales) > 1.05


def test_beta_zero_is_adamw():
    model, make_problem, X, y = setup(1)
    twin = copy.deepcopy(model)
    opt = ScalarSpectral(model.parameters(), SpectralProbe(model, make_problem, top_k=4, every=2),
                         lr=3e-3, beta=0.0)
    reference = torch.optim.AdamW(twin.parameters(), lr=3e-3, foreach=False)
    for _ in range(3):
        step_with(model, opt, X, y)
        step_with(twin, reference, X, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    assert opt.probe.count == 2


def test_state_dict_round_trip():
    model, make_problem, X, y = setup(2)
    opt = ScalarSpectral(model.parameters(), SpectralProbe(model, make_problem, top_k=4, every=2), lr=1e-2)
    for _ in range(3):
        step_with(model, opt, X, y)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    clone = copy.deepcopy(model)
    clone.load_state_dict(saved["model"])
    reopened = ScalarSpectral(clone.parameters(), SpectralProbe(clone, make_problem, top_k=4, every=2),
                              lr=1e-2)
    reopened.load_state_dict(saved["opt"])
    for _ in range(3):
        step_with(model, opt, X, y)
        step_with(clone, reopened, X, y)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_refused_inputs():
    model, make_problem, *_ = setup()
    probe = SpectralProbe(model, make_problem)
    with pytest.raises(ValueError, match="scale_bounds"):
        ScalarSpectral(model.parameters(), probe, scale_bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="betas"):
        ScalarSpectral(model.parameters(), probe, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="not a trainable parameter"):
        ScalarSpectral(nn.Linear(3, 3).parameters(), probe)
