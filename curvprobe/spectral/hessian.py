"""One Hessian spectrum report: both ends, the trace, the density and every layer's top eigenvalues.

For ``H = ∇²L_k(w)`` (N × N, exact HVPs) :func:`hessian_report` gathers, in
one Dataset:

- the top ``top`` and bottom ``bottom`` eigenpairs of ``H`` with their
  certificates (:func:`~curvprobe.linalg.eigensolver.top_eigenspace`,
  ``which="largest"`` / ``"smallest"``): relative residuals, ``converged``
  flags and the guard's miss bound per end;
- ``tr H`` by Hutch++ with its standard error
  (:func:`~curvprobe.linalg.trace.trace`);
- the spectral density by stochastic Lanczos quadrature — nodes and weights
  per probe and the Gaussian-smoothed density on a grid with its bandwidth
  (:func:`~curvprobe.linalg.density.spectral_density`);
- the top ``layer_top`` eigenvalues of every layer's Hessian block
  (:func:`~curvprobe.spectral.eigenvalues.layer_eigenvalues`).

Units: eigenvalues, the trace and the density's abscissa in loss/param²;
the density in 1/(loss/param²). The wall time and the operator products of
each part are recorded as attrs.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from curvprobe.core.problem import Problem
from curvprobe.linalg import spectral_density, top_eigenspace, trace
from curvprobe.linalg.result import Eigenspace
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


def hessian_report(problem: Problem, *, k: int | None = None, top: int = 10, bottom: int = 5,
                   layer_top: int = 4, layers: str | list[str] | None = None, tol: float = 1e-3,
                   trace_matvecs: int = 60, density_probes: int = 10, density_steps: int = 80,
                   seed: int = 0) -> xr.Dataset:
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
        Relative residual of every eigenpair.
    trace_matvecs : int
        Products for the Hutch++ trace.
    density_probes, density_steps : int
        SLQ probes and Lanczos steps per probe.
    seed : int
        Seeds every random vector.

    Returns
    -------
    xarray.Dataset
        ``top_*`` over ``rank``, ``bottom_*`` over ``bottom_rank`` (eigenvalue,
        residual, converged); ``trace`` and ``trace_stderr``; ``density``
        over ``grid`` and the quadrature ``node``/``weight`` over
        ``(probe, step)``; ``layer_eigenvalue``, ``layer_residual``,
        ``layer_converged`` over ``(layer, layer_rank)``; attrs with each
        part's products and seconds, the miss bounds and provenance.
    """
    op = problem.hessian_operator(k)
    seconds, products = {}, {}

    def timed(name: str, fn):
        t0, m0 = time.perf_counter(), op.num_matvecs
        out = fn()
        seconds[name], products[name] = time.perf_counter() - t0, op.num_matvecs - m0
        return out

    hi = timed("top", lambda: top_eigenspace(op, top, tol=tol, seed=seed))
    lo = timed("bottom", lambda: top_eigenspace(op, bottom, tol=tol, seed=seed + 1, which="smallest"))
    tr = timed("trace", lambda: trace(op, num_matvecs=trace_matvecs, seed=seed))
    dens = timed("density", lambda: spectral_density(op, num_probes=density_probes,
                                                    lanczos_steps=density_steps, seed=seed))
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
    ds = xr.Dataset(variables, coords=coords)
    if layer_top:
        t0 = time.perf_counter()
        per_layer = layer_eigenvalues(problem, layer_top, layers=layers, k=k, tol=tol, seed=seed)
        seconds["layers"] = time.perf_counter() - t0
        products["layers"] = int(per_layer["num_matvecs"].sum())
        renamed = per_layer.rename({"rank": "layer_rank", "eigenvalue": "layer_eigenvalue",
                                    "residual": "layer_residual", "converged": "layer_converged"})
        ds = ds.merge(renamed[["layer_eigenvalue", "layer_residual", "layer_converged"]])
    ds.attrs = {**provenance(problem), "measurement": "hessian_report",
                "k": problem.num_samples if k is None else int(k), "tol": tol, "seed": seed,
                "top_miss_probability": hi.miss_probability, "bottom_miss_probability": lo.miss_probability,
                "density_bandwidth": dens.bandwidth, "products": products,
                "seconds": {name: round(value, 3) for name, value in seconds.items()}}
    return ds
