"""Probing laws around w*."""

from __future__ import annotations

import pytest
import torch

import curvprobe
from curvprobe import Isotropic, Sphere, Subspace


def test_probes():
    gen = torch.Generator().manual_seed(0)
    e = Sphere(0.5).sample(4, gen, 50)
    assert torch.allclose(e.norm(dim=1), torch.full((4,), 0.5, dtype=torch.float64))
    x = Isotropic(2.0).sample(2000, gen, 10)
    assert abs(float(x.std()) - 2.0) < 0.1
    U, _ = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64))
    y = Subspace(U, 0.1).sample(5, gen, 10)
    assert torch.allclose(y - (y @ U) @ U.T, torch.zeros_like(y), atol=1e-12)
    assert torch.equal(curvprobe.Dirac().sample(3, gen, 10), torch.zeros(3, 10, dtype=torch.float64))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive and finite"):
            Isotropic(bad)
