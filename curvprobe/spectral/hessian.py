"""One Hessian spectrum report: both ends, the trace, the density and every layer's top eigenvalues.

For ``H = ∇²L_k(w)`` (N × N, exact HVPs) :func:`hessian_report` gathers, in
one Dataset:

- the top ``top`` and bottom ``bottom`` eigenpairs of ``H`` with their
  certificates (:func:`~curvprobe.linalg.eigensolver.top_eigenspace`,
  ``which="largest"`` / ``"smallest"``): relative residuals, ``converged``
  flags, the residual scale ``s`` and the guard's miss bound per end. The
  bottom end's residuals are relative to ``s`` = the largest ``|θ|`` its
  solve saw (a lower bound on ``‖H‖``), so ``bottom_tol`` is a fraction of
  the spectral scale, not of the (possibly near-zero) bottom eigenvalues;
- ``tr H`` by Hutch++ with its standard error
  (:func:`~curvprobe.linalg.trace.trace`);
- the spectral density by stochastic Lanczos quadrature — nodes and weights
  per probe and the Gaussian-smoothed density on a grid with its bandwidth
  (:func:`~curvprobe.linalg.density.spectral_density`);
- the top ``layer_top`` eigenvalues of every layer's Hessian block
  (:func:`~curvprobe.spectral.eigenvalues.layer_eigenvalues`).

Cost is operator products (HVPs), each one pass over the ``k`` samples: the
defaults spend about 55 + 75 on the ends, 30 on the trace, 4 × 40 on the
density and 20–40 per layer (the built-in transformer's 14 layers
dominate); ``attrs["products"]``, ``attrs["seconds"]`` (wall) and
``attrs["cpu_seconds"]`` (this process's CPU time, all its threads: what a
shared machine distorts least) record each part.
The heavier settings of earlier versions (``trace_matvecs=60``,
``density_probes=10``, ``density_steps=80``, ``layer_top=4``) are
arguments away. Every eigenpair that missed its tolerance or its
guard within the solver's budget keeps ``converged`` False and is counted
in ``attrs["not_converged"]``.

Units: eigenvalues, the trace and the density's abscissa in loss/param²;
the density in 1/(loss/param²).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from curvprobe.core.problem import Problem
from curvprobe.linalg import spectral_density, top_eigenspace, trace
from curvprobe.linalg.density import SpectralDensity
from curvprobe.linalg.result import Eigenspace
from curvprobe.linalg.trace import TraceEstimate
from curvprobe.results import provenance
from curvprobe.spectral.eigenvalues import layer_eigenvalues

__all__ = ["hessian_report"]


def _end(es: Eigenspace, dim: str, label: str) -> dict[str, tuple]:
    """One end's eigenvalues, residuals and converged flags over ``dim``."""
    return {f"{label}_eigenvalue": ((dim,), es.values.cpu().numpy(),
                                    {"long_name": f"{label} eigenvalues of H", "units": "loss/param²"}),
            f"{label}_residual": ((dim,), es.residuals.cpu().numpy(),
                                   {"long_name": "relative residual ‖Hu−θu‖/scale", "units": "1"}),
            f"{label}_converged": ((dim,), es.converged.cpu().numpy(),
                                    {"long_name": "converged and certified eigenpair"})}


class _Clock:
    """Wall and CPU seconds and operator products of each named part of the
    report; ``after`` is called once each part ends."""

    def __init__(self, op, after: Callable[[], object]) -> None:
        self.op, self.after = op, after
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.products: dict[str, int] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0, c0, m0 = time.perf_counter(), time.process_time(), self.op.num_matvecs
        out = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        self.cpu_seconds[name] = round(time.process_time() - c0, 3)
        self.products[name] = self.op.num_matvecs - m0
        self.after()
        return out


def _not_converged(ds: xr.Dataset) -> dict[str, int]:
    """Eigenpairs per part whose ``converged`` flag is False (the NaN ranks
    of a layer smaller than ``layer_top`` are not pairs and not counted)."""
    counts = {}
    for part, prefix in (("top", "top"), ("bottom", "bottom"), ("layers", "layer")):
        if f"{prefix}_converged" in ds:
            found = np.isfinite(ds[f"{prefix}_eigenvalue"].values)
            counts[part] = int((found & ~ds[f"{prefix}_converged"].values.astype(bool)).sum())
    return counts


def _spectrum(hi: Eigenspace, lo: Eigenspace, tr: TraceEstimate, dens: SpectralDensity) -> xr.Dataset:
    """Both ends, the trace and the density as the report's variables."""
    variables = {**_end(hi, "rank", "top"), **_end(lo, "bottom_rank", "bottom"),
                 "trace": ((), tr.value, {"long_name": "tr H (Hutch++)", "units": "loss/param²"}),
                 "trace_stderr": ((), tr.stderr, {"long_name": "standard error of tr H",
                                                  "units": "loss/param²"}),
                 "density": (("grid",), dens.density.cpu().numpy(),
                             {"long_name": "smoothed spectral density (SLQ)", "units": "param²/loss"}),
                 "node": (("probe", "step"), dens.nodes.cpu().numpy(),
                          {"long_name": "Lanczos quadrature nodes", "units": "loss/param²"}),
                 "weight": (("probe", "step"), dens.weights.cpu().numpy(),
                            {"long_name": "quadrature weights (sum to 1)", "units": "1"})}
    coords = {"rank": np.arange(1, hi.D + 1), "bottom_rank": np.arange(1, lo.D + 1),
              "grid": ("grid", dens.grid.cpu().numpy(), {"units": "loss/param²"})}
    return xr.Dataset(variables, coords=coords)


def _layers(problem: Problem, clock: _Clock, layer_top: int, layers, k: int | None, tol: float,
            seed: int, solver: dict[str, Any]) -> xr.Dataset:
    """Every layer's top ``layer_top`` eigenpairs, renamed for the report; its
    time and products go into ``clock``."""
    per_layer = clock.run("layers", lambda: layer_eigenvalues(problem, layer_top, layers=layers, k=k,
                                                              tol=tol, seed=seed, **solver))
    clock.products["layers"] = int(per_layer["num_matvecs"].sum())  # products of the blocks' operators
    renamed = per_layer.rename({"rank": "layer_rank", "eigenvalue": "layer_eigenvalue",
                                "residual": "layer_residual", "converged": "layer_converged",
                                "miss_probability": "layer_miss_probability", "scale": "layer_scale"})
    return renamed[["layer_eigenvalue", "layer_residual", "layer_converged", "layer_miss_probability",
                    "layer_scale"]]


def _outcome_attrs(hi: Eigenspace, lo: Eigenspace, dens: SpectralDensity, ds: xr.Dataset,
                   clock: _Clock) -> dict[str, Any]:
    """The report's measured attrs: residual scales and miss bounds of both
    ends, the density's bandwidth, ``not_converged`` per part and each
    part's products, wall and CPU seconds."""
    return {"top_scale": hi.scale, "bottom_scale": lo.scale,
            "top_miss_probability": hi.miss_probability, "bottom_miss_probability": lo.miss_probability,
            "density_bandwidth": dens.bandwidth, "not_converged": _not_converged(ds),
            "products": clock.products, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds}


def _check_settings(tols: dict[str, float], counts: dict[str, tuple[int, int]]) -> None:
    """Raise ``ValueError`` on a non-positive tolerance or count before any product is spent."""
    for name, value in tols.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value!r}")
    for name, (value, low) in counts.items():
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def hessian_report(problem: Problem, *, k: int | None = None, top: int = 10, bottom: int = 5,
                   layer_top: int = 2, layers: str | list[str] | None = None, tol: float = 1e-3,
                   bottom_tol: float | None = None, layer_tol: float | None = None,
                   trace_matvecs: int = 30, density_probes: int = 4, density_steps: int = 40,
                   seed: int = 0, miss_bound: float | None = None, guard_steps: int = 10,
                   between_stages: Callable[[], object] | None = None) -> xr.Dataset:
    """The Hessian's spectrum at ``w*`` over samples ``[0, k)`` in one Dataset (module docstring).

    Parameters
    ----------
    problem : Problem
    k : int, optional
        Samples of ``L_k`` (default all).
    top, bottom : int
        Eigenpairs at the largest and the smallest end.
    layer_top : int
        Eigenvalues of every layer's block (``0``: skip the per-layer part).
    layers : optional
        Layer groups as :func:`~curvprobe.spectral.eigenvalues.layer_eigenvalues` takes them.
    tol : float
        Relative residual of the top eigenpairs (relative to ``|θ_1|``).
    bottom_tol, layer_tol : float, optional
        Relative residual of the bottom eigenpairs (relative to the largest
        ``|θ|`` the solve saw, ``≤ ‖H‖``) and of every layer's pairs
        (relative to the block's ``|θ_1|``); default ``tol``.
    trace_matvecs : int
        Products for the Hutch++ trace (its standard error shrinks about as
        ``1/trace_matvecs`` on a decaying spectrum, ``1/√`` on a flat one).
    density_probes, density_steps : int
        SLQ probes and Lanczos steps per probe (the bandwidth is the
        spectrum's width over ``density_steps``).
    seed : int
        Seeds every random vector.
    miss_bound : float, optional
        Certify every eigenspace (top, bottom, each layer) at this miss
        bound: its guard runs until the bound falls to it, within
        ``guard_steps`` (raise both together), else not converged. Default:
        the bounds are reported, nothing is certified.
    guard_steps : int
        Lanczos steps of each missed-eigenvalue guard.
    between_stages : callable, optional
        Called after each part (:meth:`curvprobe.app.threads.AutoThreads.between_stages`).

    Returns
    -------
    xarray.Dataset
        ``top_*`` over ``rank``, ``bottom_*`` over ``bottom_rank`` (eigenvalue,
        residual, converged); ``trace`` and ``trace_stderr``; ``density``
        over ``grid`` and the quadrature ``node``/``weight`` over
        ``(probe, step)``; ``layer_eigenvalue``, ``layer_residual``,
        ``layer_converged`` over ``(layer, layer_rank)`` and
        ``layer_miss_probability``, ``layer_scale`` over ``layer``; attrs with
        the settings, each part's products, wall and CPU seconds, the residual
        scales, the miss bounds, ``not_converged`` per part and provenance.
    """
    bottom_tol, layer_tol = (tol if t is None else t for t in (bottom_tol, layer_tol))
    _check_settings({"tol": tol, "bottom_tol": bottom_tol, "layer_tol": layer_tol},
                    {"top": (top, 1), "bottom": (bottom, 1), "layer_top": (layer_top, 0),
                     "trace_matvecs": (trace_matvecs, 3), "density_probes": (density_probes, 1),
                     "density_steps": (density_steps, 1)})
    if miss_bound is not None and not 0 < miss_bound < 1:  # before any product is spent
        raise ValueError(f"miss_bound must lie in (0, 1), got {miss_bound!r}")
    solver: dict[str, Any] = {"guard_steps": int(guard_steps), "max_miss_probability": miss_bound}
    clock = _Clock(op := problem.hessian_operator(k), between_stages or (lambda: None))
    hi = clock.run("top", lambda: top_eigenspace(op, top, tol=tol, seed=seed, **solver))
    lo = clock.run("bottom", lambda: top_eigenspace(op, bottom, tol=bottom_tol, seed=seed + 1,
                                                    which="smallest", **solver))
    tr = clock.run("trace", lambda: trace(op, num_matvecs=trace_matvecs, seed=seed))
    dens = clock.run("density", lambda: spectral_density(op, num_probes=density_probes,
                                                         lanczos_steps=density_steps, seed=seed))
    ds = _spectrum(hi, lo, tr, dens)
    if layer_top:
        ds = ds.merge(_layers(problem, clock, layer_top, layers, k, layer_tol, seed, solver))
    ds.attrs = {**provenance(problem), "measurement": "hessian_report",
                "k": problem.num_samples if k is None else int(k), "tol": tol, "bottom_tol": bottom_tol,
                "layer_tol": layer_tol, "layer_top": int(layer_top), "trace_matvecs": int(trace_matvecs),
                "density_probes": int(density_probes), "density_steps": int(density_steps), "seed": seed,
                "miss_bound": math.nan if miss_bound is None else float(miss_bound),
                "guard_steps": int(guard_steps), **_outcome_attrs(hi, lo, dens, ds, clock)}
    return ds
