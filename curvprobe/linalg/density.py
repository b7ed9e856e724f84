"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

The spectral density of ``A`` (N × N) with eigenpairs ``(λ_j, u_j)`` is the
measure ``μ = (1/N) Σ_j δ_{λ_j}``. For a random unit vector ``v`` with
``E v vᵀ = I/N``, the measure ``μ_v = Σ_j (u_jᵀ v)² δ_{λ_j}`` has mean ``μ``.
``s`` Lanczos steps from ``v`` (full reorthogonalisation, so no ghost copies
of converged eigenvalues) give ``T = Qᵀ A Q`` (s, s) with ``T y_i = θ_i y_i``,
and the Gauss quadrature

    μ_v ≈ Σ_i τ_i² δ_{θ_i},   τ_i = e_1ᵀ y_i,

exact for polynomials of degree < 2s (Golub & Meurant). Averaging over
``p`` probes (``num_probes``; Rademacher entries ±1/√N) estimates ``μ``:

    μ̂ = (1/p) Σ_probes Σ_i τ_i² δ_{θ_i}    (nodes (p, s), weights summing to 1).

A probe whose Krylov space closes before ``s`` steps (an invariant subspace,
``N`` small) continues from a random orthogonal vector: its coupling to the
new block is zero, so the new nodes carry zero weight and the quadrature is
unchanged. All probes run together, one batched product of ``p`` columns
per step; memory ``p · s · N`` float64 for their bases.

The smoothed density on a grid is ``ρ(t) = Σ w φ_h(t − θ)`` with a Gaussian
kernel ``φ_h`` of standard deviation ``h`` (``bandwidth``): by default
``h = (θ_max − θ_min)/s``, the resolution of an ``s``-point quadrature (its
nodes are about that far apart inside the spectrum), so ``ρ`` is smooth
without blurring what the quadrature resolved. ``ρ`` integrates to 1; its
units are 1/(units of ``A``).

Accuracy: the Wasserstein-1 distance between ``μ̂`` and ``μ``
(:meth:`SpectralDensity.wasserstein`) is what the tests measure against dense
spectra; the measurements on the built-in models are in
``docs/performance.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from scipy.stats import wasserstein_distance
from torch import Tensor

from curvprobe.core.operators import LinearOperator
from curvprobe.linalg.trace import rademacher


@dataclass(frozen=True)
class SpectralDensity:
    """An SLQ estimate of the spectral density ``(1/N) Σ δ_λ``.

    Attributes
    ----------
    nodes : Tensor (p, s) float64
        Quadrature nodes ``θ`` per probe (units of ``A``).
    weights : Tensor (p, s) float64
        Their weights ``τ² / p``; all of them sum to 1.
    grid : Tensor (G,) float64
        Points ``t`` of the smoothed density.
    density : Tensor (G,) float64
        ``ρ(t) = Σ w φ_h(t − θ)`` (1 / units of ``A``), integrating to 1.
    bandwidth : float
        ``h``, the kernel's standard deviation.
    num_matvecs : int
        Operator products spent (``p · s``).
    """

    nodes: Tensor
    weights: Tensor
    grid: Tensor
    density: Tensor
    bandwidth: float
    num_matvecs: int

    @property
    def num_probes(self) -> int:
        """Number of probe vectors ``p``."""
        return self.nodes.shape[0]

    @property
    def lanczos_steps(self) -> int:
        """Lanczos steps per probe ``s``."""
        return self.nodes.shape[1]

    def wasserstein(self, eigenvalues: Tensor | np.ndarray) -> float:
        """Wasserstein-1 distance from the quadrature measure to the uniform
        measure on ``eigenvalues`` (N,), e.g. a dense spectrum (units of ``A``)."""
        return float(wasserstein_distance(self.nodes.flatten().cpu().numpy(),
                                          np.asarray(eigenvalues, dtype=np.float64).ravel(),
                                          self.weights.flatten().cpu().numpy()))

    def to_dataset(self) -> xr.Dataset:
        """The estimate as an ``xarray.Dataset``: ``node`` and ``weight`` over
        ``(probe, step)``, ``density`` over ``grid``; the bandwidth and the
        products as attrs (a caller adds provenance)."""
        return xr.Dataset(
            {"node": (("probe", "step"), self.nodes.cpu().numpy(),
                      {"long_name": "quadrature node θ (Ritz value)", "units": "units of A"}),
             "weight": (("probe", "step"), self.weights.cpu().numpy(),
                        {"long_name": "quadrature weight τ²/p (all sum to 1)", "units": "1"}),
             "density": (("grid",), self.density.cpu().numpy(),
                         {"long_name": "Gaussian-smoothed spectral density", "units": "1/units of A"})},
            coords={"probe": np.arange(self.num_probes), "step": np.arange(1, self.lanczos_steps + 1),
                    "grid": ("grid", self.grid.cpu().numpy(), {"long_name": "eigenvalue",
                                                              "units": "units of A"})},
            attrs={"bandwidth": self.bandwidth, "num_matvecs": self.num_matvecs,
                   "num_probes": self.num_probes, "lanczos_steps": self.lanczos_steps})

    def moment(self, power: int) -> float:
        """``∫ t^power dμ̂``: ``(1/N) tr A^power`` estimated (``N · moment(1)``
        estimates the trace)."""
        return float((self.weights * self.nodes**power).sum())


def gaussian_smoothing(nodes: Tensor, weights: Tensor, grid: Tensor, bandwidth: float) -> Tensor:
    """``ρ(t) = Σ w φ_h(t − θ)`` on ``grid`` (G,) for nodes and weights of any
    matching shape; ``φ_h`` the normal density with standard deviation ``h``."""
    z = (grid[:, None] - nodes.flatten()[None, :]) / bandwidth
    return (torch.exp(-0.5 * z * z) @ weights.flatten()) / (bandwidth * math.sqrt(2 * math.pi))


def slq_nodes(op: LinearOperator, V: Tensor, steps: int, generator: torch.Generator
              ) -> tuple[Tensor, Tensor]:
    """Gauss quadrature of ``p`` probes at once: nodes and weights (p, s).

    ``V`` (N, p) holds unit probes. Each step applies ``op`` to the ``p``
    current vectors in one ``matmat`` and orthogonalises each image against
    its own probe's basis (two classical Gram–Schmidt passes); column ``j``
    of ``T``'s upper triangle holds the summed coefficients of both passes
    and the lower triangle mirrors it. Weights are the squared first
    components of ``T``'s eigenvectors (each probe's sum to 1).
    """
    n, p = V.shape
    basis = torch.empty(p, steps, n, dtype=torch.float64, device=op.device)
    T = torch.zeros(p, steps, steps, dtype=torch.float64, device=op.device)
    x = V.T.clone()
    for j in range(steps):
        basis[:, j] = x
        w = op.matmat(x.T).T
        for _ in range(2):
            c = torch.einsum("pjn,pn->pj", basis[:, : j + 1], w)
            w = w - torch.einsum("pjn,pj->pn", basis[:, : j + 1], c)
            T[:, : j + 1, j] += c
        if j + 1 < steps:
            x = _next_probe_vectors(w, basis[:, : j + 1], generator)
    T = T + torch.tril(T.transpose(1, 2), -1)
    theta, Y = torch.linalg.eigh(T.cpu())
    return theta.to(op.device), (Y[:, 0, :] ** 2).to(op.device)


def _next_probe_vectors(w: Tensor, basis: Tensor, generator: torch.Generator) -> Tensor:
    """``w / ‖w‖`` per probe (p, N); a probe whose residual vanished
    (invariant subspace) gets a random unit vector orthogonal to its basis."""
    norms = w.norm(dim=1)
    scale = max(float(norms.max()), 1e-300)
    x = w / norms.clamp_min(1e-300)[:, None]
    for i in torch.nonzero(norms <= 1e-12 * scale)[:, 0].tolist():
        r = torch.randn(w.shape[1], generator=generator, dtype=torch.float64,
                        device=generator.device).to(w.device)
        for _ in range(2):
            r = r - basis[i].T @ (basis[i] @ r)
        x[i] = r / r.norm()
    return x


def spectral_density(op: LinearOperator, *, num_probes: int = 10, lanczos_steps: int = 80,
                     seed: int = 0, grid: Tensor | np.ndarray | None = None, grid_size: int = 512,
                     bandwidth: float | None = None) -> SpectralDensity:
    """Spectral density of the symmetric ``op`` by stochastic Lanczos quadrature.

    Parameters
    ----------
    op : LinearOperator
        E.g. ``problem.hessian_operator(k)`` (N × N); only ``matmat`` is used.
    num_probes : int
        Rademacher probes ``p`` (run together: batched products).
    lanczos_steps : int
        Lanczos steps per probe ``s`` (capped at N); ``p · s`` products in all.
    seed : int
        Seeds the probes (a generator on the operator's device).
    grid : array (G,), optional
        Where to evaluate the smoothed density; default ``grid_size`` points
        from ``θ_min − 3h`` to ``θ_max + 3h``.
    bandwidth : float, optional
        Kernel standard deviation ``h``; default ``(θ_max − θ_min)/s``.

    Returns
    -------
    SpectralDensity
        Nodes and weights of the quadrature, the smoothed density on the grid
        and its bandwidth.
    """
    for name, value in (("num_probes", num_probes), ("lanczos_steps", lanczos_steps),
                        ("grid_size", grid_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be positive and finite, got {bandwidth!r}")
    n = op.shape[0]
    steps = min(int(lanczos_steps), n)
    generator = torch.Generator(device=op.device).manual_seed(int(seed))
    start = op.num_matvecs
    V = rademacher(n, int(num_probes), generator, op.device) / math.sqrt(n)
    theta, tau2 = slq_nodes(op, V, steps, generator)
    weights = tau2 / int(num_probes)
    width = float(theta.max() - theta.min())
    # a spectrum of one point (width 0) still gets a positive kernel
    h = float(bandwidth) if bandwidth is not None else max(width / steps, 1e-12 * max(1.0, width))
    if grid is None:
        points = torch.linspace(float(theta.min()) - 3 * h, float(theta.max()) + 3 * h, int(grid_size),
                                dtype=torch.float64, device=op.device)
    else:
        points = torch.as_tensor(grid, dtype=torch.float64, device=op.device)
    rho = gaussian_smoothing(theta, weights, points, h)
    return SpectralDensity(theta, weights, points, rho, h, op.num_matvecs - start)
