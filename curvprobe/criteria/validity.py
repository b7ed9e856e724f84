"""Quadratic validity: which probe scales σ are "local" (``docs/concepts.md``).

For ``δ ~ N(0, σ² I_N)`` and ``g``, ``H`` the gradient and Hessian of ``L_k``
at ``w*``, the relative error of the second-order model is

    e(δ) = |gᵀδ + ½ δᵀHδ − (L_k(w* + δ) − L_k(w*))| / |L_k(w* + δ) − L_k(w*)|.

Its mean and spread over draws, on a σ grid, give the validated local regime:
the largest σ such that the mean error is ≤ ``threshold`` there and at every
smaller σ of the grid. Surrogate estimators used beyond it are flagged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from curvprobe.core.problem import Problem
from curvprobe.criteria.engine import noise
from curvprobe.criteria.spec import NOISE_STREAMS, check_sigmas, mc_samples_argument, surrogate_only
from curvprobe.results import provenance


def quadratic_validity(problem: Problem, sigmas: Sequence[float], *, k: int | None = None,
                       mc_samples: int = 32, seed: int = 0, threshold: float = 0.1,
                       point_batch: int = 8, num_samples: int | None = None) -> xr.Dataset:
    """Relative error of the quadratic model of ``L_k`` around ``w*`` per σ.

    Returns a Dataset over ``sigma`` (and ``sample``) with ``rel_error``
    (sample, sigma), ``rel_error_mean``, ``rel_error_std``,
    ``rel_error_median`` and ``valid`` (mean ≤ threshold, cumulatively from
    the smallest σ); attrs ``validated_sigma_max`` (NaN if no σ passes),
    ``threshold``, ``k``.
    """
    mc_samples = mc_samples_argument(mc_samples, num_samples, "quadratic_validity")
    sigmas = sorted(check_sigmas(sigmas))
    if mc_samples < 2:
        raise ValueError(f"mc_samples must be >= 2 for a spread, got {mc_samples}")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    stop = problem.num_samples if k is None else k
    problem.sample_range(stop)
    N = problem.num_params
    w_star = problem.params.double()
    L0 = problem.loss(k=stop)
    g = problem.gradient(k=stop)
    err = np.zeros((mc_samples, len(sigmas)))
    for s0 in range(0, mc_samples, point_batch):
        s1 = min(s0 + point_batch, mc_samples)
        stream = NOISE_STREAMS["validity"]
        xi = torch.stack([noise(seed, stream, s, (N,)) for s in range(s0, s1)]).to(problem.device)
        # one HVP batch serves every σ: δᵀHδ scales as σ²
        quad_unit = (xi.T * problem.hvp(xi.T, stop)).sum(0)
        lin_unit = xi @ g
        for j, sigma in enumerate(sigmas):
            losses = problem.per_sample_losses_at(w_star + sigma * xi, stop=stop, point_batch=point_batch)
            actual = losses.sum(1) / stop - L0
            model = sigma * lin_unit + 0.5 * sigma**2 * quad_unit
            err[s0:s1, j] = ((model - actual).abs() / actual.abs()).cpu().numpy()
    mean = err.mean(0)
    valid = np.cumprod(mean <= threshold).astype(bool)
    regime = float(np.asarray(sigmas)[valid].max()) if valid.any() else float("nan")
    return xr.Dataset(
        {
            "rel_error": (("sample", "sigma"), err, {"long_name": "relative error of the quadratic model",
                                                     "units": "1"}),
            "rel_error_mean": ("sigma", mean, {"long_name": "mean relative error", "units": "1"}),
            "rel_error_std": ("sigma", err.std(0, ddof=1), {"long_name": "std of relative error",
                                                            "units": "1"}),
            "rel_error_median": ("sigma", np.median(err, 0), {"long_name": "median relative error",
                                                              "units": "1"}),
            "valid": ("sigma", valid, {"long_name": "inside the validated local regime"}),
        },
        coords={"sigma": ("sigma", np.asarray(sigmas), {"units": "param"}),
                "sample": np.arange(mc_samples)},
        attrs={**provenance(problem), "measurement": "quadratic_validity", "k": stop,
               "threshold": threshold, "seed": seed, "validated_sigma_max": regime},
    )


def regime_flags(ds: xr.Dataset, validity: xr.Dataset) -> xr.Dataset:
    """Add ``outside_validated_regime`` (sigma) to a stabilization result and
    warn when surrogate estimators (gm, quad_mc) are reported beyond it."""
    regime = float(validity.attrs["validated_sigma_max"])
    outside = ~(ds["sigma"].values <= regime) if np.isfinite(regime) else np.ones(ds.sizes["sigma"], bool)
    ds = ds.assign(outside_validated_regime=("sigma", outside,
                                             {"long_name": "σ beyond the validated quadratic regime"}))
    ds.attrs["validated_sigma_max"] = regime
    ds.attrs["validity_threshold"] = float(validity.attrs["threshold"])
    surrogate = surrogate_only([str(e) for e in ds["estimator"].values])
    if outside.any() and surrogate:
        bad = ds["sigma"].values[outside].tolist()
        ds.attrs["validity_warning"] = {"sigma": bad, "estimators": surrogate}
        warnings.warn(f"{'/'.join(surrogate)} reported at sigma={bad}, beyond the validated "
                      f"quadratic regime (sigma <= {regime:g}): proxy values, not the criterion",
                      stacklevel=3)
    return ds
