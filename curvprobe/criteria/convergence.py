"""Monte Carlo convergence of the subspace estimators at one k.

At one sample count k, with the top-D eigenspace ``U_D`` of ``H^(k)(w*)``,
the draws ``z_s = σ ξ_s[:D]`` (``s = 1..S_max``) give per-draw values of the
true increment ``δ_k(w* + U_D z_s)`` and of its quadratic surrogate
``q_k(z_s)`` (``docs/concepts.md``). Running means over the first S draws of

- ``direct_mc``: ``δ_k(w_s)²`` (the criterion Δ₂^(D)),
- ``quad_mc``:   ``q_k(z_s)²`` (the surrogate),
- ``cv_mc``:     ``GM + (δ_k(w_s)² − q_k(z_s)²)`` (control variate),

with their standard errors ``std/√S``, show both Monte Carlo estimators
settling as S grows — ``quad_mc`` onto the closed form ``gm``, ``direct_mc``
onto the true criterion, which equals GM inside the quadratic regime. The
prefixes are nested (S = 4 uses the first four of the draws S = 256 uses), so
the curves are one Monte Carlo path, not independent runs.

The draws are those of :func:`curvprobe.stabilization` (the ``subspace``
noise stream of :data:`~curvprobe.criteria.spec.NOISE_STREAMS`), so at the same k, eigenspace and S the
values agree with its ``direct_mc``/``quad_mc``/``cv_mc``.

The function also times the evaluation of each estimator for one (σ, D)
(stage III of the paper): GM is a closed form in D, quadratic MC is O(S D²),
direct MC costs S forward passes over k+1 samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from curvprobe.core.problem import Problem
from curvprobe.criteria.engine import (
    SUBSPACE_CELLS,
    SubspaceCoefficients,
    SubspaceDraws,
    coefficients_per_k,
    increments,
    noise,
    running_mean_stderr,
    subspace_increments,
    surrogate_values,
)
from curvprobe.criteria.spec import NOISE_STREAMS, StabilizationSpec, mc_samples_argument
from curvprobe.linalg import Eigenspace, top_eigenspace
from curvprobe.results import provenance

__all__ = ["CONVERGENCE_ESTIMATORS", "mc_convergence"]

CONVERGENCE_ESTIMATORS = ("direct_mc", "quad_mc", "cv_mc", "gm")
"""The subspace estimators of Δ₂^(D) whose Monte Carlo paths are followed (p = 2)."""


def _sample_counts(max_samples: int) -> list[int]:
    counts, s = [], 4
    while s < max_samples:
        counts.append(s)
        s *= 2
    return [c for c in counts if c >= 2] + [max_samples]


def _timeit(fn, min_seconds: float = 0.02, max_repeats: int = 10_000) -> float:
    """Seconds per call of ``fn`` (repeated until ``min_seconds`` have passed)."""
    repeats, t0 = 0, time.perf_counter()
    while True:
        fn()
        repeats += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or repeats >= max_repeats:
            return elapsed / repeats


def _running_estimates(problem: Problem, U: torch.Tensor, coeff: SubspaceCoefficients, a: torch.Tensor,
                       xi: torch.Tensor, spec: StabilizationSpec,
                       counts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running value and stderr (S, sigma, dim, estimator) and evaluation seconds (sigma, dim, estimator)."""
    k, est = spec.ks[0], CONVERGENCE_ESTIMATORS
    value = np.full((len(counts), len(spec.sigmas), len(spec.dims), len(est)), np.nan)
    stderr = np.full_like(value, np.nan)
    seconds = np.full((len(spec.sigmas), len(spec.dims), len(est)), np.nan)
    for si, sigma in enumerate(spec.sigmas):
        for di, D in enumerate(spec.dims):
            t0 = time.perf_counter()
            delta = subspace_increments(problem, U, xi, [sigma], [D], [k],
                                        point_batch=spec.point_batch)[(0, 0)][:, 0]
            t_direct = time.perf_counter() - t0
            c, B = coeff.terms(D)
            z = sigma * xi[:, :D]
            draws = SubspaceDraws(a, c, B, sigma, z, surrogate_values(a, c, B, z), delta, 2.0)
            t_quad = _timeit(lambda: (surrogate_values(a, c, B, z) ** 2).mean())  # noqa: B023
            t_gm = _timeit(draws.gm)
            seconds[si, di] = [t_direct, t_quad, t_direct + t_quad + t_gm, t_gm]
            for ei, name in enumerate(est):
                offset, integrand = SUBSPACE_CELLS[name](draws)
                if integrand is None:
                    value[:, si, di, ei], stderr[:, si, di, ei] = float(offset), 0.0
                    continue
                mean, se = running_mean_stderr(integrand, counts)
                value[:, si, di, ei] = (offset + mean).cpu().numpy()
                stderr[:, si, di, ei] = se.cpu().numpy()
    return value, stderr, seconds


def mc_convergence(problem: Problem, k: int, *, sigmas: Sequence[float], dims: Sequence[int] = (1, 4, 16),
                   mc_samples: int = 256, sample_counts: Sequence[int] | None = None, seed: int = 0,
                   tol: float = 1e-3, point_batch: int = 8, eigen_kwargs: dict | None = None,
                   init: Eigenspace | torch.Tensor | None = None,
                   num_samples: int | None = None) -> xr.Dataset:
    """Running Monte Carlo estimates of Δ₂^(D)(k+1) against the number of draws S.

    Parameters
    ----------
    problem : Problem
        Ordered samples; at least k + 2 of them.
    k : int
        Sample count (the criterion compares L_(k+1) with L_k).
    sigmas : sequence of float
        Probe scales σ > 0 (param).
    dims : sequence of int
        Subspace dimensions D (one eigenspace of size max(dims)).
    mc_samples : int
        S_max, the number of draws.
    sample_counts : sequence of int, optional
        The S at which running estimates are reported (default 4, 8, 16, ...
        and S_max).
    seed, tol, point_batch, eigen_kwargs, init
        As in :func:`curvprobe.stabilization`.
    num_samples : int, optional
        Deprecated name of ``mc_samples``.

    Returns
    -------
    xarray.Dataset
        Dims ``S``, ``sigma``, ``dim``, ``estimator`` (direct_mc, quad_mc,
        cv_mc, gm): ``value`` (loss²) and ``stderr`` (running mean over the
        first S draws; ``gm`` is constant in S with stderr 0);
        ``eval_seconds`` (sigma, dim, estimator): seconds to evaluate each
        estimator at S_max for one (σ, D); eigensolver diagnostics over
        ``rank``; attrs ``k``, ``seed``, ``hvps``, the eigenspace's
        ``miss_probability``, ``miss_bound`` (``max_miss_probability`` of
        ``eigen_kwargs``, None without) and ``eigen_certified``, and provenance.
    """
    S = mc_samples_argument(mc_samples, num_samples, "mc_convergence")
    spec = StabilizationSpec(ks=(k,), sigmas=tuple(sigmas), dims=tuple(dims),
                             estimators=CONVERGENCE_ESTIMATORS, mc_samples=S, seed=seed, tol=tol,
                             point_batch=point_batch, eigen_options=eigen_kwargs or {})
    spec.check_problem(problem.num_samples, problem.num_params)
    counts = sorted({int(c) for c in (sample_counts or _sample_counts(S))})
    if counts[0] < 2 or counts[-1] > S:
        raise ValueError(f"sample_counts must lie in [2, {S}], got {counts}")
    Dmax = spec.max_dim
    t0 = time.perf_counter()
    es = top_eigenspace(problem.hessian_operator(k), Dmax, tol=tol, seed=seed, init=init,
                        **spec.eigen_options)
    t_subspace = time.perf_counter() - t0
    t0 = time.perf_counter()
    a_k = float(increments(problem.per_sample_losses(stop=k + 1), [k])[0])
    coeff = coefficients_per_k(problem, k, a_k, es, problem.gradient(k=k) * k)
    t_assembly = time.perf_counter() - t0
    xi = noise(seed, NOISE_STREAMS["subspace"], 0, (S, Dmax), problem.device)
    a = torch.as_tensor(a_k, dtype=torch.float64)

    value, stderr, seconds = _running_estimates(problem, es.vectors, coeff, a, xi, spec, counts)
    attrs = {**provenance(problem), "measurement": "mc_convergence", "k": k, "seed": seed, "max_samples": S,
             "tol": tol, "hvps": es.num_matvecs, "subspace_seconds": t_subspace,
             "assembly_seconds": t_assembly, "a": a_k, "miss_probability": float(es.miss_probability),
             "miss_bound": spec.eigen_options.get("max_miss_probability"), "eigen_certified": es.certified}
    return _convergence_dataset(value, stderr, seconds, es, counts, spec, attrs)


def _convergence_dataset(value: np.ndarray, stderr: np.ndarray, seconds: np.ndarray, es: Eigenspace,
                         counts: list[int], spec: StabilizationSpec, attrs: dict) -> xr.Dataset:
    """The :func:`mc_convergence` result from its arrays."""
    return xr.Dataset(
        {
            "value": (("S", "sigma", "dim", "estimator"), value,
                      {"long_name": "running estimate of Δ₂^(D)(k+1)", "units": "loss^2"}),
            "stderr": (("S", "sigma", "dim", "estimator"), stderr,
                       {"long_name": "Monte Carlo standard error", "units": "loss^2"}),
            "eval_seconds": (("sigma", "dim", "estimator"), seconds,
                             {"long_name": f"evaluation time at S={spec.mc_samples} for one (σ, D)",
                              "units": "s"}),
            "eigenvalues": (("rank",), es.values.cpu().numpy(),
                            {"long_name": f"top eigenvalues of H^({spec.ks[0]})", "units": "loss/param²"}),
            "residuals": (("rank",), es.residuals.cpu().numpy(),
                          {"long_name": "relative residual ‖Hu−θu‖/|θ₁|", "units": "1"}),
            "converged": (("rank",), es.converged.cpu().numpy(),
                          {"long_name": "converged eigenpair: residual ≤ tol and the guard passed"}),
        },
        coords={
            "S": ("S", np.asarray(counts, dtype=np.int64), {"long_name": "Monte Carlo draws S"}),
            "sigma": ("sigma", np.asarray(spec.sigmas, dtype=float), {"units": "param"}),
            "dim": ("dim", np.asarray(spec.dims, dtype=np.int64), {"long_name": "subspace dimension D"}),
            "estimator": ("estimator", np.asarray(CONVERGENCE_ESTIMATORS, dtype=str)),
            "rank": ("rank", np.arange(1, spec.max_dim + 1, dtype=np.int64)),
        },
        attrs=attrs,
    )
