"""The paper's k-decay protocol: the criteria measured along training, one k at a time.

A model is trained from initialisation on ordered samples, ``b`` samples per
optimiser step, so after step t it has seen ``n_t = t·b`` samples. Whenever
``n_t ≥ k + 1`` for the next k of a grid, the criteria at k are evaluated at
the current weights ``w_t`` with the first k and k + 1 samples:

    δ_k(w) = L_{k+1}(w) − L_k(w),   L_k(w) = (1/k) Σ_{i≤k} ℓ_i(w),

probed around ``w* = w_t`` exactly as :func:`curvprobe.stabilization` probes
a fixed point (``U_D`` the top-D eigenspace of ``H^(k)(w_t)``). Each k thus
has its own point ``w_t``: the protocol's k-curve mixes the decay in k with
training, where :func:`curvprobe.stabilization` and
:class:`~curvprobe.criteria.curriculum.CurriculumProbe` hold the point fixed
across the grid. Several seeds (initialisation, sample order and draws) give
the mean ± standard deviation across seeds.

This module holds the measurement and its bookkeeping — the k grid
(:func:`k_grid`), which k are due (:func:`due`), one evaluation
(:func:`measure_at`) and the merge across seeds (:func:`merge_seeds`). The
training loop, the files and the processes are the app's
(:func:`curvprobe.app.curriculum_run.run_curriculum`, ``curvprobe
curriculum``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from curvprobe.core.problem import Problem
from curvprobe.criteria.spec import StabilizationSpec
from curvprobe.criteria.sweep import iter_parts, merge_parts

__all__ = ["SPACINGS", "due", "k_grid", "measure_at", "merge_seeds"]

SPACINGS = ("log", "linear")
"""Spacings of :func:`k_grid`."""


def k_grid(k_min: int, k_max: int, count: int, spacing: str = "log") -> tuple[int, ...]:
    """``count`` distinct integers from ``k_min`` to ``k_max``, geometric (``log``) or arithmetic.

    Rounding may merge neighbours of a dense log grid; the count is then
    raised until ``count`` distinct values remain (or every integer is used).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= int(k_min) <= int(k_max) or int(count) < 1:
        raise ValueError(f"need 1 <= k_min <= k_max and count >= 1, got {k_min}, {k_max}, {count}")
    count = min(int(count), int(k_max) - int(k_min) + 1)
    space = np.geomspace if spacing == "log" else np.linspace
    n = count
    while True:
        ks = sorted({round(float(x)) for x in space(k_min, k_max, n)})
        if len(ks) >= count:
            return tuple(ks)
        n += 1


def due(seen: int, ks: Sequence[int], start: int) -> list[int]:
    """Indices ``j ≥ start`` of the grid ``ks`` (increasing) whose measurement is due
    after ``seen`` samples: ``seen ≥ ks[j] + 1``, in order (several when a step
    crosses more than one k)."""
    out = []
    j = int(start)
    while j < len(ks) and seen >= ks[j] + 1:
        out.append(j)
        j += 1
    return out


def measure_at(problem: Problem, k: int, spec: StabilizationSpec) -> xr.Dataset:
    """The criteria of ``spec`` at the one sample count k, at the problem's point.

    ``problem`` holds at least the first k + 1 samples (the protocol passes
    exactly those) at the current weights; ``spec.ks`` is replaced by
    ``(k,)``. Returns the merged Dataset of :func:`curvprobe.stabilization`
    (k of length 1) without its ``stage_seconds``.
    """
    spec = dataclasses.replace(spec, ks=(int(k),))
    parts = [part.dataset for part in iter_parts(problem, spec)]
    ds = merge_parts(parts, spec.estimators)
    return ds.drop_vars(["stage_seconds", "stage"], errors="ignore")


def merge_seeds(per_seed: Mapping[int, xr.Dataset]) -> xr.Dataset:
    """One Dataset over ``seed`` from each seed's k-curve, with the seed mean and spread.

    Parameters
    ----------
    per_seed : mapping seed -> Dataset
        Each a concatenation along ``k`` of :func:`measure_at` results over the
        same grid (plus any per-k variables the runner adds, such as
        ``validation_loss``).

    Returns
    -------
    xarray.Dataset
        The per-seed variables along a new leading ``seed`` dimension, and
        ``seed_mean``, ``seed_std`` (standard deviation across seeds, ddof 1;
        NaN for one seed) and ``seed_stderr`` (``seed_std/√R``) of ``value``
        over (k, sigma, dim, estimator); ``<name>_mean`` and ``<name>_std`` of
        every per-k variable of the runner's listed in the ``per_k_variables``
        attr (e.g. ``validation_loss``).
    """
    if not per_seed:
        raise ValueError("no seeds to merge")
    seeds = sorted(per_seed)
    ds = xr.concat([per_seed[s] for s in seeds], dim="seed", combine_attrs="override",
                   data_vars="all", coords="minimal", compat="override")
    ds = ds.assign_coords(seed=("seed", np.asarray(seeds, dtype=np.int64), {"long_name": "training seed"}))
    R = len(seeds)
    std = ds["value"].std("seed", ddof=1) if R > 1 else xr.full_like(ds["value"].isel(seed=0), np.nan)
    out = ds.assign(
        seed_mean=ds["value"].mean("seed").assign_attrs(long_name="mean over seeds of value"),
        seed_std=std.assign_attrs(long_name="standard deviation over seeds of value (ddof 1)"),
        seed_stderr=(std / np.sqrt(R)).assign_attrs(long_name="seed_std / √(number of seeds)"))
    for name in ds.attrs.get("per_k_variables", []):
        if name in ds:
            spread = ds[name].std("seed", ddof=1) if R > 1 else xr.full_like(ds[name].isel(seed=0), np.nan)
            out[f"{name}_mean"] = ds[name].mean("seed").assign_attrs(long_name=f"mean over seeds of {name}")
            out[f"{name}_std"] = spread.assign_attrs(long_name=f"standard deviation over seeds of {name}")
    out.attrs["measurement"] = "curriculum_protocol"
    return out
