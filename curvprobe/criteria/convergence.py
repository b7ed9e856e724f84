"""Monte Carlo convergence of the subspace estimators at one k (DESIGN §7 items 4 and 6).

At one sample count k, with the top-D eigenspace ``U_D`` of ``H^(k)(w*)``,
the draws ``z_s = σ ξ_s[:D]`` (``s = 1..S_max``) give per-draw values of the
true increment ``δ_k(w* + U_D z_s)`` and of its quadratic surrogate
``q_k(z_s)`` (DESIGN §2). Running means over the first S draws of

- ``direct_mc``: ``δ_k(w_s)²`` (the criterion Δ₂^(D)),
- ``quad_mc``:   ``q_k(z_s)²`` (the surrogate),
- ``cv_mc``:     ``GM + (δ_k(w_s)² − q_k(z_s)²)`` (control variate),

with their standard errors ``std/√S``, show both Monte Carlo estimators
settling as S grows — ``quad_mc`` onto the closed form ``gm``, ``direct_mc``
onto the true criterion, which equals GM inside the quadratic regime. The
prefixes are nested (S = 4 uses the first four of the draws S = 256 uses), so
the curves are one Monte Carlo path, not independent runs.

The draws are those of :func:`curvprobe.stabilization` (same
``noise(seed, stream=1, ...)``), so at the same k, eigenspace and S the
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

from curvprobe.criteria.sweep import (_STREAMS, all_k_increments, check_dims, check_grid, check_sigmas,
                                coefficients_per_k, increments, noise)
from curvprobe.linalg import Eigenspace, top_eigenspace
from curvprobe.criteria.probes import Subspace
from curvprobe.core.problem import Problem

__all__ = ["CONVERGENCE_ESTIMATORS", "mc_convergence"]

CONVERGENCE_ESTIMATORS = ("direct_mc", "quad_mc", "cv_mc", "gm")


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


def mc_convergence(problem: Problem, k: int, *, sigmas: Sequence[float], dims: Sequence[int] = (1, 4, 16),
                   num_samples: int = 256, sample_counts: Sequence[int] | None = None, seed: int = 0,
                   tol: float = 1e-3, point_batch: int = 8, eigen_kwargs: dict | None = None,
                   init: Eigenspace | torch.Tensor | None = None) -> xr.Dataset:
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
    num_samples : int
        S_max, the number of draws.
    sample_counts : sequence of int, optional
        The S at which running estimates are reported (default 4, 8, 16, ...
        and S_max).
    seed, tol, point_batch, eigen_kwargs, init
        As in :func:`stabilization`.

    Returns
    -------
    xarray.Dataset
        Dims ``S``, ``sigma``, ``dim``, ``estimator`` (direct_mc, quad_mc,
        cv_mc, gm): ``value`` (loss²) and ``stderr`` (running mean over the
        first S draws; ``gm`` is constant in S with stderr 0);
        ``eval_seconds`` (sigma, dim, estimator): seconds to evaluate each
        estimator at S_max for one (σ, D); eigensolver diagnostics over
        ``rank``; attrs ``k``, ``seed``, ``hvps`` and provenance.
    """
    from curvprobe.results import provenance

    k = check_grid([k], problem.num_samples)[0]
    sigmas = check_sigmas(sigmas)
    dims = check_dims(dims, problem.num_params)
    S = int(num_samples)
    if S < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    counts = sorted({int(c) for c in (sample_counts or _sample_counts(S))})
    if counts[0] < 2 or counts[-1] > S:
        raise ValueError(f"sample_counts must lie in [2, {S}], got {counts}")
    Dmax = max(dims)
    t0 = time.perf_counter()
    op = problem.hessian_operator(k)
    es = top_eigenspace(op, Dmax, tol=tol, seed=seed, init=init, **(eigen_kwargs or {}))
    t_subspace = time.perf_counter() - t0
    t0 = time.perf_counter()
    a_k = float(increments(problem.per_sample_losses(stop=k + 1), [k])[0])
    grad_sum = problem.gradient(k=k) * k
    coeff = coefficients_per_k(problem, k, a_k, es, grad_sum)
    t_assembly = time.perf_counter() - t0
    xi = noise(seed, _STREAMS["subspace"], 0, (S, Dmax), problem.device)
    U = es.vectors

    est = CONVERGENCE_ESTIMATORS
    value = np.full((len(counts), len(sigmas), len(dims), len(est)), np.nan)
    stderr = np.full_like(value, np.nan)
    seconds = np.full((len(sigmas), len(dims), len(est)), np.nan)
    idx = torch.as_tensor(counts)
    for si, sigma in enumerate(sigmas):
        for di, D in enumerate(dims):
            probe = Subspace(U[:, :D], sigma)

            def draw(s0: int, s1: int, probe=probe, D=D) -> torch.Tensor:
                return probe.perturb(xi[s0:s1, :D], U.shape[0])

            t0 = time.perf_counter()
            delta = all_k_increments(problem, [k], draw, S, point_batch=point_batch)[:, 0]
            seconds[si, di, 0] = time.perf_counter() - t0
            q = coeff.surrogate(D, sigma)
            z = sigma * xi[:, :D]
            seconds[si, di, 1] = _timeit(lambda: (q(z) ** 2).mean())
            seconds[si, di, 3] = _timeit(lambda: q.gm())
            gm = float(q.gm())
            q_vals = q(z)
            seconds[si, di, 2] = seconds[si, di, 0] + seconds[si, di, 1] + seconds[si, di, 3]
            series = {"direct_mc": delta**2, "quad_mc": q_vals**2, "cv_mc": gm + delta**2 - q_vals**2}
            for ei, name in enumerate(est[:3]):
                x = series[name]
                csum, csq = x.cumsum(0), (x**2).cumsum(0)
                n = idx.double()
                mean = csum[idx - 1] / n
                var = (csq[idx - 1] - n * mean**2) / (n - 1)
                value[:, si, di, ei] = mean.numpy()
                stderr[:, si, di, ei] = (var.clamp_min(0) / n).sqrt().numpy()
            value[:, si, di, 3] = gm
            stderr[:, si, di, 3] = 0.0
    return xr.Dataset(
        {
            "value": (("S", "sigma", "dim", "estimator"), value,
                      {"long_name": "running estimate of Δ₂^(D)(k+1)", "units": "loss^2"}),
            "stderr": (("S", "sigma", "dim", "estimator"), stderr,
                       {"long_name": "Monte Carlo standard error", "units": "loss^2"}),
            "eval_seconds": (("sigma", "dim", "estimator"), seconds,
                             {"long_name": f"evaluation time at S={S} for one (σ, D)", "units": "s"}),
            "eigenvalues": (("rank",), es.values.cpu().numpy(),
                            {"long_name": f"top eigenvalues of H^({k})", "units": "loss/param²"}),
            "residuals": (("rank",), es.residuals.cpu().numpy(),
                          {"long_name": "relative residual ‖Hu−θu‖/|θ₁|", "units": "1"}),
            "converged": (("rank",), es.converged.cpu().numpy(), {"long_name": "certified eigenpair"}),
        },
        coords={
            "S": ("S", np.asarray(counts, dtype=np.int64), {"long_name": "Monte Carlo draws S"}),
            "sigma": ("sigma", np.asarray(sigmas, dtype=float), {"units": "param"}),
            "dim": ("dim", np.asarray(dims, dtype=np.int64), {"long_name": "subspace dimension D"}),
            "estimator": ("estimator", np.asarray(est, dtype=str)),
            "rank": ("rank", np.arange(1, Dmax + 1, dtype=np.int64)),
        },
        attrs={**provenance(problem), "measurement": "mc_convergence", "k": k, "seed": seed,
               "max_samples": S, "tol": tol, "hvps": es.num_matvecs,
               "subspace_seconds": t_subspace, "assembly_seconds": t_assembly,
               "a": a_k},
    )
