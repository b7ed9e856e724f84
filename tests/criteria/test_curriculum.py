"""CurriculumProbe: a callback from the user's own training loop."""

from __future__ import annotations

import warnings

import pytest
import torch

from curvprobe import CurriculumProbe, Problem
from curvprobe.zoo.models import MLP, MLPConfig, sample_cross_entropy


def _data(n: int = 80):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return X, y


def _setup(tmp_path, **kwargs):
    X, y = _data()
    model = MLP(MLPConfig(widths=(5, 8, 3)), seed=0).double()
    probe_set = (X[:33], y[:33])
    options = dict(sigmas=[1e-2], dims=[1, 2], estimators=["delta1", "full_mc", "direct_mc", "gm"],
                   mc_samples=4, every=2, path=tmp_path / "curriculum.nc",
                   make_problem=lambda m: Problem(m, sample_cross_entropy, *probe_set, batch_size=16))
    options.update(kwargs)
    return model, (X[33:], y[33:]), CurriculumProbe([4, 8, 16], **options)


def _train(model, train, probe, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    results = []
    for step in steps:
        loss = sample_cross_entropy(model(train[0]), train[1]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(probe(step, model))
    return results


def test_appends_along_step_and_resumes(tmp_path):
    model, train, probe = _setup(tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    results = _train(model, train, probe, range(5))
    assert [r is not None for r in results] == [True, False, True, False, True]
    ds = probe.load()
    assert list(ds["step"].values) == [0, 2, 4]
    assert ds["value"].dims == ("step", "k", "sigma", "dim", "estimator")
    assert ds["eigenvalues"].dims == ("step", "k", "rank")
    assert bool(ds["converged"].all())
    assert "wall_seconds" in ds
    # the model trained normally between probes (the probe copies, never modifies)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the curvature changes along training, so the steps hold different eigenvalues
    assert float(abs(ds["eigenvalues"].sel(step=0) - ds["eigenvalues"].sel(step=4)).max()) > 0
    assert probe.eig_path.exists()
    assert not list(tmp_path.glob(".*.tmp"))

    # a new probe on the same file (a resumed training run) skips recorded steps
    _, _, again = _setup(tmp_path)
    assert again._init is not None  # warm start read back from <path>.eig.pt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert again(4, model) is None
        assert again(6, model) is not None
    assert list(again.load()["step"].values) == [0, 2, 4, 6]


def test_warm_start_agrees_with_cold_start(tmp_path):
    model, _, probe = _setup(tmp_path, estimators=["gm"], every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm_first = probe(0, model)
        warm = probe(1, model)  # same model: warm-started from step 0's eigenvectors
    cold = probe.load().sel(step=0)
    assert warm_first is not None and warm is not None
    assert torch.allclose(torch.as_tensor(warm["eigenvalues"].values[0]),
                          torch.as_tensor(cold["eigenvalues"].values), rtol=1e-3, atol=1e-8)


def test_refuses_bad_settings_and_training_mode(tmp_path):
    with pytest.raises(ValueError, match="sigma"):
        CurriculumProbe([4, 8], sigmas=[-1.0], path=tmp_path / "x.nc", make_problem=lambda m: None)
    with pytest.raises(ValueError, match="unknown estimator"):
        CurriculumProbe([4, 8], sigmas=[0.1], estimators=["nope"], path=tmp_path / "x.nc",
                        make_problem=lambda m: None)
    with pytest.raises(ValueError, match="sorted and without duplicates"):
        CurriculumProbe([8, 4], sigmas=[0.1], path=tmp_path / "x.nc", make_problem=lambda m: None)
    X, y = _data(20)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Dropout(0.2), torch.nn.Linear(4, 3)).double()
    probe = CurriculumProbe([4, 8], sigmas=[0.1], dims=[1], mc_samples=2, path=tmp_path / "x.nc",
                            make_problem=lambda m: Problem(m, sample_cross_entropy, X, y))
    with pytest.raises(ValueError, match="eval"):
        probe(0, model)  # training mode with dropout: refused, not silently switched
    assert model.training
    assert not (tmp_path / "x.nc").exists()
