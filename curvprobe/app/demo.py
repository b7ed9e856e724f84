"""``curvprobe demo``: the whole measurement on the built-in tiny transformer.

Stages (each timed, each with a progress bar on a terminal):

1. load the cached ``tiny-gpt`` (train and cache it on first use, ≈ 90 s);
2. quadratic-validity sweep over a σ grid at the largest k → ``validity.nc``;
   the validated regime picks the probe scales: the largest validated σ, one
   a decade below it, and one beyond the regime;
3. a resumable probe run (:func:`curvprobe.app.runs.run_probe`) of every estimator
   over a geometric k grid (12 values, 8 … 512; ``--quick``: 2 … 64), averaged
   over R = 64 orderings of the samples (``--quick``: 32) with one certified
   top-16 eigenspace of the Hessian of all K + 1 samples (``subspace =
   "pooled"``, labelled in the results): the k-curves, slopes and the
   captured fraction are ordering averages with standard errors
   → ``stabilization.nc`` (+ ``config.toml``, ``parts/``, ``timings.json``);
4. Monte Carlo convergence at one k (S = 4 … S_max, nested draws)
   → ``mc_convergence.nc``;
5. figures (those of `docs/estimators.md`) as PNG, and ``summary.md`` (also printed).

``resume=True`` (``curvprobe demo --resume --out DIR``) continues an interrupted
demo: the validity sweep and the MC convergence are read from their files when
they are there, the probe run keeps its finished parts, and a finished demo's
figures and summary are kept; the final files are those of an uninterrupted demo.

:data:`FULL` and :data:`QUICK` hold the settings; the full demo is sized for
≤ 15 minutes on 2 CPU cores once the model is cached, ``--quick`` for ≤ 2
minutes (measured times: ``docs/performance.md``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from curvprobe.app import _progress
from curvprobe.app.config import load_config
from curvprobe.criteria.spec import ESTIMATORS
from curvprobe.results import atomic_write, save

__all__ = ["FULL", "QUICK", "DemoSettings", "choose_sigmas", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run."""

    name: str
    ks: tuple[int, ...]
    dims: tuple[int, ...]
    validity_sigmas: tuple[float, ...]
    validity_samples: int
    mc_samples: int
    convergence_k: int
    convergence_samples: int
    subspace: str = "pooled"
    orderings: int = 64
    tol: float = 1e-3
    batch_size: int = 128  # peak memory of the coefficient assembly ∝ batch_size · D · N
    point_batch: int = 16
    seed: int = 0

    @property
    def num_data(self) -> int:
        """Samples the demo needs: ``max(ks) + 1`` (Δ(k+1) uses sample k+1)."""
        return max(self.ks) + 1


def geometric_ks(lo: int, hi: int, count: int) -> tuple[int, ...]:
    """``count`` distinct integers, geometrically spaced from ``lo`` to ``hi``."""
    n = count
    while True:
        ks = sorted({round(x) for x in np.geomspace(lo, hi, n)})
        if len(ks) >= count:
            return tuple(ks)
        n += 1


FULL = DemoSettings(
    name="full",
    ks=geometric_ks(8, 512, 12),
    dims=(1, 4, 16),
    validity_sigmas=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    validity_samples=8,
    mc_samples=32,
    convergence_k=64,
    convergence_samples=256,
    orderings=64,
)

QUICK = DemoSettings(
    name="quick",
    ks=geometric_ks(2, 64, 12),
    dims=(1, 4, 16),
    validity_sigmas=(1e-4, 1e-3, 1e-2, 1e-1),
    validity_samples=4,
    mc_samples=8,
    convergence_k=32,
    convergence_samples=64,
    orderings=32,
    tol=1e-2,
)


_DEMO_ESTIMATORS = [name for name in ESTIMATORS if name != "gm_full"]
"""Every estimator but ``gm_full``, which estimates one ordering (the demo averages over many)."""


def choose_sigmas(validity: xr.Dataset) -> tuple[list[float], float, float]:
    """Probe scales from a validity sweep: ``(sigmas, σ_valid, σ_beyond)``.

    ``σ_valid`` is the largest validated σ, plus the grid value a decade below
    it when there is one; ``σ_beyond`` is the first σ of the grid at least 10×
    ``σ_valid`` (else the largest grid value beyond the regime, else 10×
    ``σ_valid``). If nothing validates, the smallest σ stands in (flagged).
    """
    grid = sorted(float(s) for s in validity["sigma"].values)
    regime = float(validity.attrs["validated_sigma_max"])
    valid = regime if math.isfinite(regime) else grid[0]
    below = [s for s in grid if s <= valid / 9.99]
    beyond = [s for s in grid if s >= valid * 9.99] or [s for s in grid if s > valid] or [valid * 10]
    sigmas = ([below[-1]] if below else []) + [valid, beyond[0]]
    return sigmas, valid, beyond[0]


@dataclass
class DemoResult:
    out: Path
    stabilization: xr.Dataset
    validity: xr.Dataset
    convergence: xr.Dataset
    summary: str
    figures: list[Path]
    seconds: dict[str, float]


def run_demo(out: str | Path | None = None, *, quick: bool = False, progress: bool = False,
             log: Callable[[str], None] | None = None, settings: DemoSettings | None = None,
             resume: bool = False, between_stages: Callable[[], object] | None = None) -> DemoResult:
    """Run (or with ``resume``, continue) the demo in ``out`` (default ``runs/<timestamp>``);
    see the module docstring. ``between_stages`` is called between its stages and
    stabilization parts (the CLI's ``--threads auto`` re-decides there)."""
    from curvprobe.app.runs import RunError, default_out, run_probe
    from curvprobe.app.sources import build_problem
    from curvprobe.zoo import models

    say = log or (lambda message: None)
    stage = between_stages or (lambda: None)
    s = settings or (QUICK if quick else FULL)
    out = Path(out or default_out()).resolve()
    if not resume and ((out / "config.toml").exists() or (out / "summary.md").exists()):
        raise RunError(f"{out} already holds a demo or run; pass --resume to continue it, or choose "
                       "another --out")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    say(f"[1/5] built-in tiny transformer (trained and cached on first use, ≈ 90 s; cache: "
        f"{models.cache_directory()})")
    base = load_config(None, {
        "model": "builtin:tiny-gpt", "ks": list(s.ks), "sigmas": [1e-3], "dims": list(s.dims),
        "estimators": _DEMO_ESTIMATORS, "mc_samples": s.mc_samples, "num_data": s.num_data, "tol": s.tol,
        "seed": s.seed, "subspace": s.subspace, "orderings": s.orderings, "batch_size": s.batch_size,
        "point_batch": s.point_batch,
        "validity": True,  # stage 2's sweep, handed to run_probe (which then runs none of its own)
        "validity_samples": s.validity_samples, "out": str(out)})
    loaded = build_problem(base, progress=progress)
    problem = loaded.problem
    seconds["model (load or train)"] = time.perf_counter() - t0
    say(f"      {problem!r}")

    K = max(s.ks)
    stage()
    t0 = time.perf_counter()
    say(f"[2/5] quadratic validity at k = {K}: {len(s.validity_sigmas)} σ x {s.validity_samples} draws")
    out.mkdir(parents=True, exist_ok=True)
    validity = _reuse(out / "validity.nc", resume, say)
    if validity is None:
        validity = _validity_stage(problem, s, out, progress)
    sigmas, sigma_valid, sigma_beyond = choose_sigmas(validity)
    seconds["validity sweep"] = time.perf_counter() - t0
    say(f"      validated σ ≤ {validity.attrs['validated_sigma_max']:.3g}; probing σ = "
        f"{', '.join(f'{x:.3g}' for x in sigmas)} (σ = {sigma_beyond:.3g} is beyond the regime)")

    stage()
    t0 = time.perf_counter()
    config = base.replace(sigmas=sigmas)
    say(f"[3/5] stabilization over {len(s.ks)} k in [{min(s.ks)}, {K}], "
        f"D ∈ {{{', '.join(map(str, s.dims))}}}, every estimator but gm_full, S = {s.mc_samples}, "
        + {"per_k": "per-k eigenspaces", "fixed": f"one eigenspace U_D of H^({K}) for all k"}.get(
            s.subspace, f"one eigenspace U_D of all {K + 1} samples for all k")
        + f" (tol {s.tol:g}), {s.orderings} orderings of the samples")
    run = run_probe(config, problem=problem, resume=resume, progress=progress, validity=validity,
                    digests=loaded.digests, between_stages=stage)
    ds = run.dataset
    seconds["stabilization run"] = time.perf_counter() - t0

    stage()
    t0 = time.perf_counter()
    say(f"[4/5] Monte Carlo convergence at k = {s.convergence_k}, S up to {s.convergence_samples}")
    conv = _reuse(out / "mc_convergence.nc", resume, say)
    if conv is None:
        conv = _convergence_stage(problem, s, out, progress, [sigma_valid, sigma_beyond],
                                  config.spec().eigen_options)
    seconds["MC convergence run"] = time.perf_counter() - t0

    say("[5/5] figures and summary")
    if resume and (out / "summary.md").exists():  # a finished demo: its figures and summary stand
        say(f"      kept {out / 'summary.md'} and the figures beside it")
        paths, summary = sorted(out.glob("*.png")), (out / "summary.md").read_text()
    else:
        paths, summary = _figures_and_summary(out, s, ds, validity, conv, seconds, t_all)
    return DemoResult(out, ds, validity, conv, summary, paths, seconds)


def _convergence_stage(problem, s: DemoSettings, out: Path, progress: bool, sigmas: list[float],
                       eigen_options: Mapping[str, Any]) -> xr.Dataset:
    """Stage 4: Monte Carlo convergence at ``s.convergence_k`` inside and
    beyond the regime, saved as ``mc_convergence.nc``; its eigenspace is
    solved (and certified) with the probe's ``eigen_options``."""
    from curvprobe.criteria.convergence import mc_convergence

    with _progress.bar(len(s.dims) * 2 * s.convergence_samples, "MC convergence", show=progress,
                       unit="pt") as pbar, _progress.counting(problem, on_points=pbar.update):
        conv = mc_convergence(problem, s.convergence_k, sigmas=sigmas, dims=list(s.dims),
                              mc_samples=s.convergence_samples, seed=s.seed, tol=s.tol,
                              point_batch=s.point_batch, eigen_kwargs=dict(eigen_options))
    save(conv, out / "mc_convergence.nc", overwrite=True)
    return conv


def _validity_stage(problem, s: DemoSettings, out: Path, progress: bool) -> xr.Dataset:
    """Stage 2: the quadratic-validity sweep at the largest k, saved as ``validity.nc``."""
    from curvprobe.criteria.validity import quadratic_validity

    with _progress.bar(len(s.validity_sigmas) * s.validity_samples, "validity sweep", show=progress,
                       unit="pt") as pbar, _progress.counting(problem, on_points=pbar.update):
        validity = quadratic_validity(problem, list(s.validity_sigmas), k=max(s.ks),
                                      mc_samples=s.validity_samples, seed=s.seed, point_batch=s.point_batch)
    save(validity, out / "validity.nc", overwrite=True)
    return validity


def _reuse(path: Path, resume: bool, say: Callable[[str], None]) -> xr.Dataset | None:
    """The result at ``path`` when resuming and it is there (a finished stage), else None."""
    from curvprobe.results import load

    if not (resume and path.is_file()):
        return None
    say(f"      resumed: kept {path.name}")
    return load(path)


def _figures_and_summary(out: Path, s: DemoSettings, ds: xr.Dataset, validity: xr.Dataset,
                         conv: xr.Dataset, seconds: dict[str, float],
                         t_all: float) -> tuple[list[Path], str]:
    """Stage 5: the PNG figures and ``summary.md`` (``seconds`` gains ``figures`` and ``total``)."""
    from curvprobe.app.plots import STABILIZATION_RUN, save_figure, stabilization_figures
    from curvprobe.app.report import summary_markdown

    t0 = time.perf_counter()
    extra = {k: v for k, v in seconds.items() if k != STABILIZATION_RUN}
    # the figure draws the run's own stages in the run's place, so its bars are in run order
    figures = stabilization_figures(ds, validity=validity, convergence=conv, extra_timings=dict(seconds))
    paths = [save_figure(fig, out / f"{name}.png") for name, fig in figures.items()]
    seconds["figures"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all
    fields = ", ".join(f"{f.name}={getattr(s, f.name)}" for f in dataclasses.fields(s) if f.name != "name")
    notes = [f"demo settings: {s.name} ({fields})",
             f"wall time: {seconds['total']:.0f} s in total ("
             + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total") + ")"]
    summary = summary_markdown(ds, validity=validity, convergence=conv, extra_timings=extra,
                               title=f"curvprobe demo ({s.name})", notes=notes)
    atomic_write(out / "summary.md", lambda handle: handle.write(summary), "w")
    return paths, summary
