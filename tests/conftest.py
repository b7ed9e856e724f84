"""Shared fixtures: small float64 problems with dense-Hessian ground truth."""

from __future__ import annotations

import weakref

import pytest
import torch
from hypothesis import HealthCheck, settings

from curvprobe import Problem
from curvprobe.zoo.models import (
    MLP,
    CNNConfig,
    GPTConfig,
    MLPConfig,
    SmallCNN,
    TinyGPT,
    sample_cross_entropy,
    token_cross_entropy,
)

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


_DENSE_CACHE: weakref.WeakKeyDictionary[Problem, dict[tuple[int | None, int], torch.Tensor]] = (
    weakref.WeakKeyDictionary())


def dense_hessian(problem: Problem, k: int | None = None, start: int = 0) -> torch.Tensor:
    """Hessian of the mean loss over [start, k) by torch.func.hessian (N, N), cached
    for as long as ``problem`` lives (keyed by the object, never by its ``id``, which
    a later problem can reuse once this one is collected)."""
    cached = _DENSE_CACHE.setdefault(problem, {})
    if (k, start) not in cached:
        cached[(k, start)] = _dense_hessian(problem, k, start)
    return cached[(k, start)]


def _dense_hessian(problem: Problem, k: int | None, start: int) -> torch.Tensor:
    stop = problem.num_samples if k is None else k
    f = lambda w: problem.chunk_losses(w, start, stop).sum() / (stop - start)  # noqa: E731
    # jacfwd(grad(.)): torch.func.hessian mis-differentiates layer_norm (pytorch#196700)
    return torch.func.jacfwd(torch.func.grad(f))(problem.params.double()).double()


def mlp_problem(n: int = 24, seed: int = 0, batch_size: int = 7) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    model = MLP(MLPConfig(widths=(5, 8, 3)), seed=seed).double().eval()
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return Problem(model, sample_cross_entropy, X, y, batch_size=batch_size)


def cnn_problem(n: int = 12, seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    model = SmallCNN(CNNConfig(size=6, channels=(2, 3)), seed=seed).double().eval()
    X = torch.randn(n, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return Problem(model, sample_cross_entropy, X, y, batch_size=5)


def gpt_problem(n: int = 10, seed: int = 0) -> Problem:
    config = GPTConfig(vocab_size=11, seq_len=6, n_layer=1, n_head=2, n_embd=12, mlp_ratio=2)
    model = TinyGPT(config, seed=seed).double().eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (n, 7), generator=gen)
    return Problem(model, token_cross_entropy, ids[:, :-1], ids[:, 1:], batch_size=4)


@pytest.fixture(scope="session")
def small_problems() -> dict[str, Problem]:
    return {"mlp": mlp_problem(), "cnn": cnn_problem(), "gpt": gpt_problem()}


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict[str, str]:
    """Environment for command-line tests: a session-wide temporary model cache holding the
    trained built-in mlp, and no leftover run or launcher variables."""
    import os

    from curvprobe.zoo import models

    cache = tmp_path_factory.mktemp("curvprobe-cache")
    models.pretrained("mlp", cache_dir=cache, progress=False)
    out = dict(os.environ, CURVPROBE_CACHE=str(cache))
    for name in ("CURVPROBE_PART_DELAY", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        out.pop(name, None)
    return out
