"""Probing laws ``q`` around the trained point ``w*`` (``docs/concepts.md``).

A probe maps standard-normal noise to perturbations ``w − w*``:

| probe | law | noise |
|---|---|---|
| :class:`Dirac` | ``w = w*`` | none |
| :class:`Isotropic` (σ) | ``w = w* + ε``, ``ε ~ N(0, σ² I_N)`` | (S, N) |
| :class:`Subspace` (U_D, σ) | ``w = w* + U_D z``, ``z ~ N(0, σ² I_D)`` | (S, D) |
| :class:`Sphere` (ε) | ``w = w* + ε d``, ``d`` uniform on the unit sphere | (S, N) |

Probes are pure: they hold their parameters, and draw from a caller-supplied
``torch.Generator`` (float64 on the CPU, then moved), so a draw is reproducible
on any device. ``sample(num, generator)`` returns (num, N) perturbations;
callers that need bounded memory draw in small batches — an isotropic or
spherical perturbation costs one N-vector per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return value


class _GaussianNoise:
    """Shared by the probes that map ``noise_dim`` standard normals per point."""

    def noise_dim(self, num_params: int) -> int:
        """Standard-normal draws per point (columns of ``noise`` for :meth:`perturb`)."""
        raise NotImplementedError

    def perturb(self, noise: Tensor, num_params: int) -> Tensor:
        """Perturbations ``w − w*`` (S, N) from standard-normal ``noise`` (S, noise_dim)."""
        raise NotImplementedError

    def sample(self, num: int, generator: torch.Generator, num_params: int,
               device: torch.device | str = "cpu") -> Tensor:
        """``num`` perturbations ``w − w*`` (num, N) float64 on ``device`` (param units).

        The noise is drawn from ``generator`` on the CPU, then moved, so a draw is
        reproducible on any device.
        """
        noise = torch.randn(num, self.noise_dim(num_params), generator=generator, dtype=torch.float64)
        return self.perturb(noise.to(device), num_params)


@dataclass(frozen=True)
class Dirac:
    """``q = δ_{w*}``: the pointwise criterion Δ₁(k+1) = |δ_k(w*)|."""

    def noise_dim(self, num_params: int) -> int:
        """Standard-normal draws per point: columns of ``noise`` for :meth:`perturb`."""
        return 0

    def perturb(self, noise: Tensor, num_params: int) -> Tensor:
        """Perturbations ``w − w*`` (S, N) from standard-normal ``noise`` (S, noise_dim).

        float64 for float64 ``noise``, on its device; param units.
        """
        return torch.zeros(noise.shape[0], num_params, dtype=torch.float64, device=noise.device)

    def sample(self, num: int, generator: torch.Generator, num_params: int,
               device: torch.device | str = "cpu") -> Tensor:
        """``num`` perturbations ``w − w*`` (num, N) float64 on ``device`` (param units).

        The noise is drawn from ``generator`` on the CPU, then moved, so a draw is
        reproducible on any device.
        """
        return torch.zeros(num, num_params, dtype=torch.float64, device=device)


@dataclass(frozen=True)
class Isotropic(_GaussianNoise):
    """``ε ~ N(0, σ² I_N)`` in the full parameter space (criterion Δ₂)."""

    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _positive("sigma", self.sigma))

    def noise_dim(self, num_params: int) -> int:
        """Standard-normal draws per point: columns of ``noise`` for :meth:`perturb`."""
        return num_params

    def perturb(self, noise: Tensor, num_params: int) -> Tensor:
        """Perturbations ``w − w*`` (S, N) from standard-normal ``noise`` (S, noise_dim).

        float64 for float64 ``noise``, on its device; param units.
        """
        return self.sigma * noise


@dataclass(frozen=True)
class Sphere(_GaussianNoise):
    """``ε d`` with ``d`` uniform on the unit sphere of R^N (a smoothed Δ₁)."""

    eps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", _positive("eps", self.eps))

    def noise_dim(self, num_params: int) -> int:
        """Standard-normal draws per point: columns of ``noise`` for :meth:`perturb`."""
        return num_params

    def perturb(self, noise: Tensor, num_params: int) -> Tensor:
        """Perturbations ``w − w*`` (S, N) from standard-normal ``noise`` (S, noise_dim).

        float64 for float64 ``noise``, on its device; param units.
        """
        return self.eps * noise / noise.norm(dim=1, keepdim=True)


@dataclass(frozen=True, eq=False)
class Subspace(_GaussianNoise):
    """``U_D z`` with ``z ~ N(0, σ² I_D)``: probing inside ``span(U_D)``
    (criterion Δ₂^(D)). ``U`` (N, D) must have orthonormal columns."""

    U: Tensor
    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _positive("sigma", self.sigma))
        if self.U.dim() != 2 or self.U.shape[1] < 1:
            raise ValueError(f"U must have shape (N, D) with D >= 1, got {tuple(self.U.shape)}")

    @property
    def D(self) -> int:
        """Subspace dimension (columns of ``U``)."""
        return self.U.shape[1]

    def noise_dim(self, num_params: int) -> int:
        """Standard-normal draws per point: columns of ``noise`` for :meth:`perturb`."""
        return self.D

    def coefficients(self, noise: Tensor) -> Tensor:
        """``z = σ ξ`` (S, D) for standard-normal ``ξ`` (S, D)."""
        return self.sigma * noise

    def perturb(self, noise: Tensor, num_params: int) -> Tensor:
        """Perturbations ``w − w*`` (S, N) from standard-normal ``noise`` (S, noise_dim).

        float64 for float64 ``noise``, on its device; param units.
        """
        return self.coefficients(noise) @ self.U.to(noise.device, torch.float64).T


Probe = Dirac | Isotropic | Subspace | Sphere
