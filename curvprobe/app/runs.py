"""Resumable probe runs: a stabilization measurement written to disk part by part.

A run directory holds::

    config.toml            the resolved config (``--resume`` refuses a different one)
    sources.json           SHA-256 of the checkpoint and data files (checked on resume)
    parts/validity.nc      quadratic-validity sweep at k = max(ks)   (if enabled)
    parts/fullspace.nc     delta1, full_mc, sphere over the whole k grid (one
                           ``stabilization`` call: the all-k engine needs every k at once)
    parts/k_000010.nc      subspace estimators at k = 10 (``subspace = "per_k"``) ...
    parts/k_000010.eig.pt  ... and the top-D eigenvectors of H^(10) (float64), the
                           warm start of the next k (only the last finished k's file is kept)
    parts/subspace_fixed.nc  subspace estimators for every k (``subspace = "fixed"``)
    stabilization.nc       the merged result
    timings.json           wall time per part and per session (not in the .nc: it differs
                           between an interrupted and an uninterrupted run)

Each part is written atomically (temporary file + rename) the moment it is
finished. With ``resume=True`` finished parts are skipped and the next k
warm-starts its eigensolver from the last saved eigenvectors, exactly as the
uninterrupted run did: every k is its own ``stabilization(problem, [k], ...,
init=<previous k's vectors>)`` call in both cases, Monte Carlo draws are keyed
by ``(seed, stream, draw)`` (:func:`curvprobe.criteria.noise`), and the merged
file is always assembled from the part files on disk. So a resumed run ends
with the same ``stabilization.nc`` as an uninterrupted one with the same
config, up to the ``stage_seconds`` timing variable.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from curvprobe.app import _progress
from curvprobe.app.config import ConfigError, ProbeConfig, load_config
from curvprobe.criteria import stabilization
from curvprobe.results import atomic_write, load, save

__all__ = ["FULLSPACE_ESTIMATORS", "SUBSPACE_ESTIMATORS", "RunError", "RunOutcome", "default_out",
           "merge_parts", "run_probe"]

FULLSPACE_ESTIMATORS = ("delta1", "full_mc", "sphere")
SUBSPACE_ESTIMATORS = ("direct_mc", "quad_mc", "gm", "cv_mc")

CONFIG_FILE = "config.toml"
SOURCES_FILE = "sources.json"
RESULT_FILE = "stabilization.nc"
TIMINGS_FILE = "timings.json"
PARTS_DIR = "parts"

#: Testing aid: seconds to sleep after each written part (lets a test kill a run mid-way).
PART_DELAY_ENV = "CURVPROBE_PART_DELAY"


class RunError(ConfigError):
    """A run directory that cannot be used as asked (one-line message)."""


@dataclass
class RunOutcome:
    """What :func:`run_probe` did."""

    directory: Path
    dataset: xr.Dataset
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def result_path(self) -> Path:
        """The merged results file in :attr:`directory`."""
        return self.directory / RESULT_FILE


def default_out(prefix: str = "runs") -> str:
    """``runs/<UTC timestamp>`` (absolute, under the working directory)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return str((Path.cwd() / prefix / stamp).resolve())


def part_name(k: int) -> str:
    return f"k_{int(k):06d}"


def _write_json(path: Path, payload: dict) -> None:
    atomic_write(path, lambda h: h.write(json.dumps(payload, indent=2, sort_keys=True)), "w")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _part_delay() -> None:
    delay = float(os.environ.get(PART_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


def _stage_dict(ds: xr.Dataset) -> dict[str, float]:
    if "stage_seconds" not in ds:
        return {}
    return {str(s): float(v) for s, v in zip(ds["stage"].values, ds["stage_seconds"].values)}


class _Timings:
    """``timings.json``: per-part wall time and stage seconds, per-session summary."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = _read_json(path) or {"parts": {}, "sessions": []}
        self.session = {"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "computed": [], "skipped": []}
        self.data.setdefault("parts", {})
        self.data.setdefault("sessions", []).append(self.session)

    def part(self, name: str, seconds: float, ds: xr.Dataset | None = None) -> None:
        self.data["parts"][name] = {"seconds": round(seconds, 4),
                                    "stage_seconds": _stage_dict(ds) if ds is not None else {}}
        self.session["computed"].append(name)
        self.flush()

    def skip(self, name: str) -> None:
        self.session["skipped"].append(name)

    def flush(self, total: float | None = None) -> None:
        if total is not None:
            self.session["seconds"] = round(total, 3)
        _write_json(self.path, self.data)


def _check_directory(config: ProbeConfig, out: Path, resume: bool) -> bool:
    """Refuse to touch a finished or foreign run; True if there is a run to resume."""
    cfg_path = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise RunError(f"output path {out} exists and is not a directory")
    if not cfg_path.exists():
        if (out / RESULT_FILE).exists():
            raise RunError(f"{out} holds a {RESULT_FILE} without {CONFIG_FILE}; choose another --out")
        return False
    if not resume:
        raise RunError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    try:
        stored = load_config(cfg_path, required=())
    except ConfigError as exc:
        raise RunError(f"--resume: {cfg_path} is not a valid curvprobe config ({exc})") from None
    diff = config.differences(stored)
    if diff:
        key, now, then = diff[0]
        more = f" (and {len(diff) - 1} more key(s))" if len(diff) > 1 else ""
        raise RunError(f"--resume: {out} was started with a different config: {key} = {then!r} there, "
                       f"{now!r} now{more}; use the same config or another --out")
    return True


def _check_sources(out: Path, digests: dict[str, str], resuming: bool) -> None:
    path = out / SOURCES_FILE
    if resuming and path.exists():
        stored = _read_json(path)
        for key, value in digests.items():
            if key in stored and stored[key] != value:
                raise RunError(f"--resume: the {key} file changed since the run in {out} started "
                               "(its SHA-256 differs); use another --out")


def _eigen_kwargs(config: ProbeConfig) -> dict:
    kwargs: dict = {"guard_steps": config.guard_steps}
    if config.max_hvps:
        kwargs["max_matvecs"] = config.max_hvps
    if config.miss_bound:
        kwargs["max_miss_probability"] = config.miss_bound
    return kwargs


def run_probe(config: ProbeConfig, *, problem=None, resume: bool = False, progress: bool = False,
              validity: xr.Dataset | None = None, digests: dict[str, str] | None = None,
              log: Callable[[str], None] | None = None) -> RunOutcome:
    """Run (or resume) the stabilization measurement of ``config`` in ``config.out``.

    Parameters
    ----------
    config : ProbeConfig
        ``config.out`` is the run directory (created; must not hold another run
        unless ``resume``).
    problem : Problem, optional
        Built from ``config`` (:func:`curvprobe.app.sources.build_problem`) if None.
    resume : bool
        Continue the run in ``config.out``: finished parts are kept, a
        different config is refused (:class:`RunError`).
    progress : bool
        tqdm bars on stderr.
    validity : Dataset, optional
        A precomputed :func:`quadratic_validity` result used for the regime
        flags instead of ``config.validity``'s own sweep.
    digests : dict of str to str, optional
        SHA-256 of the source files (recorded in ``sources.json``, compared on
        resume).
    log : callable, optional
        Receives one-line status messages.

    Returns
    -------
    RunOutcome
        With the merged Dataset (also saved as ``stabilization.nc``).
    """
    say = log or (lambda message: None)
    t_start = time.perf_counter()
    if not config.out:
        config = config.replace(out=default_out())
    out = Path(config.out)
    resuming = _check_directory(config, out, resume)
    if problem is None:
        from curvprobe.app.sources import build_problem

        loaded = build_problem(config, progress=progress)
        problem, digests = loaded.problem, loaded.digests
    digests = digests or {}
    _check_sources(out, digests, resuming)
    if config.max_k + 1 > problem.num_samples:
        raise RunError(f"k = {config.max_k} is larger than the data: it needs {config.max_k + 1} samples, "
                       f"the problem has {problem.num_samples}")

    say(f"{'resuming the' if resuming else 'new'} run in {out}")
    parts = out / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob(".*.tmp"):  # temporary files of a killed run
        stale.unlink(missing_ok=True)
    if not resuming:
        config.write(out / CONFIG_FILE, header="curvprobe probe run: resolved config (do not edit; "
                     "--resume compares against it)")
        _write_json(out / SOURCES_FILE, digests)
    timings = _Timings(out / TIMINGS_FILE)
    outcome = RunOutcome(out, xr.Dataset())

    def finished(name: str) -> bool:
        if (parts / f"{name}.nc").exists():
            outcome.skipped.append(name)
            timings.skip(name)
            return True
        return False

    def store(name: str, ds: xr.Dataset, seconds: float) -> None:
        save(ds, parts / f"{name}.nc", overwrite=True)
        timings.part(name, seconds, ds)
        outcome.computed.append(name)
        _part_delay()

    common = dict(sigmas=list(config.sigmas), dims=list(config.dims), num_samples=config.mc_samples,
                  seed=config.seed, tol=config.tol, p=config.p, point_batch=config.point_batch,
                  eigen_kwargs=_eigen_kwargs(config))
    ks = list(config.ks)
    est = list(config.estimators)
    full_est = [e for e in est if e in FULLSPACE_ESTIMATORS]
    sub_est = [e for e in est if e in SUBSPACE_ESTIMATORS]
    S, n_sigma = config.mc_samples, len(config.sigmas)

    # ---- validity sweep
    if validity is None and config.validity:
        if not finished("validity"):
            from curvprobe.criteria.validity import quadratic_validity

            say(f"quadratic validity at k = {config.max_k} ({config.validity_samples} draws x {n_sigma} σ)")
            t0 = time.perf_counter()
            with _progress.bar(config.validity_samples * n_sigma, "validity sweep", show=progress,
                               unit="pt") as pbar, _progress.counting(problem, on_points=pbar.update):
                validity = quadratic_validity(problem, list(config.sigmas), k=config.max_k,
                                              num_samples=config.validity_samples, seed=config.seed,
                                              threshold=config.validity_threshold,
                                              point_batch=config.point_batch)
            store("validity", validity, time.perf_counter() - t0)
        validity = load(parts / "validity.nc")  # the same object for a fresh and a resumed run

    # ---- full-space estimators over the whole k grid
    if full_est and not finished("fullspace"):
        mc = sum(e in full_est for e in ("full_mc", "sphere"))
        say(f"full-space estimators {', '.join(full_est)} over {len(ks)} k values")
        t0 = time.perf_counter()
        with _progress.bar(S * n_sigma * mc, "full-space MC", show=progress, unit="pt") as pbar, \
                _progress.counting(problem, on_points=pbar.update):
            ds = stabilization(problem, ks, estimators=full_est, subspace=config.subspace, **common)
        store("fullspace", ds, time.perf_counter() - t0)

    # ---- subspace estimators
    if sub_est and config.subspace == "fixed":
        if not finished("subspace_fixed"):
            say(f"subspace estimators with one U_D from H^({config.max_k}) for all k")
            t0 = time.perf_counter()
            with _progress.bar(None, "fixed subspace (HVPs, points)", show=progress) as pbar, \
                    _progress.counting(problem, on_points=pbar.update, on_hvps=pbar.update):
                ds = stabilization(problem, ks, estimators=sub_est, subspace="fixed", **common)
            store("subspace_fixed", ds, time.perf_counter() - t0)
    elif sub_est:
        init, previous_eig = None, None
        done = sum((parts / f"{part_name(k)}.nc").exists() for k in ks)
        with _progress.bar(len(ks), "k sweep (per-k eigenspace + subspace MC)", show=progress,
                           initial=done, unit="k") as kbar:
            for k in ks:
                name = part_name(k)
                eig_path = parts / f"{name}.eig.pt"
                if finished(name):
                    previous_eig = eig_path
                    continue
                if previous_eig is not None and init is None:
                    init = torch.load(previous_eig, map_location="cpu", weights_only=True)["vectors"]
                hvps = [0]

                def count_hvps(m: int, k=k) -> None:
                    hvps[0] += m
                    kbar.set_postfix_str(f"k={k} HVPs={hvps[0]}", refresh=True)

                captured = {}
                t0 = time.perf_counter()
                with _progress.counting(problem, on_hvps=count_hvps if progress else None):
                    ds = stabilization(problem, [k], estimators=sub_est, subspace="per_k", init=init,
                                       on_k=lambda j, kk, es: captured.update(es=es), **common)
                es = captured["es"]
                vectors = es.vectors.detach().to("cpu", torch.float64).contiguous()
                atomic_write(eig_path, lambda h: torch.save(
                    {"k": k, "vectors": vectors, "values": es.values.cpu(),
                     "residuals": es.residuals.cpu()}, h))
                store(name, ds, time.perf_counter() - t0)
                if previous_eig is not None:  # only the last finished k's vectors are needed
                    previous_eig.unlink(missing_ok=True)
                previous_eig = eig_path
                init = vectors
                kbar.update(1)
        for stale in parts.glob("k_*.eig.pt"):  # left by a run killed between two writes
            if previous_eig is not None and stale != previous_eig:
                stale.unlink(missing_ok=True)

    # ---- merge from the files on disk
    say("merging parts")
    full = load(parts / "fullspace.nc") if full_est else None
    if not sub_est:
        subs = []
    elif config.subspace == "fixed":
        subs = [load(parts / "subspace_fixed.nc")]
    else:
        subs = [load(parts / f"{part_name(k)}.nc") for k in ks]
    merged = merge_parts(full, subs, est, validity=validity, config=config)
    save(merged, out / RESULT_FILE, overwrite=True)
    outcome.seconds = time.perf_counter() - t_start
    timings.flush(total=outcome.seconds)
    outcome.dataset = merged
    return outcome


def merge_parts(full: xr.Dataset | None, subs: list[xr.Dataset], estimators: list[str], *,
                validity: xr.Dataset | None = None, config: ProbeConfig | None = None) -> xr.Dataset:
    """One stabilization Dataset from a full-space part and subspace parts.

    Subspace parts are concatenated along ``k``, then the two groups along
    ``estimator`` (in the order ``estimators``). Eigensolver diagnostics and
    surrogate coefficients come from the subspace parts, ``a`` from the
    full-space part (one computation for every k); ``stage_seconds`` is summed
    per stage over all parts. ``validity`` adds the regime flags
    (:func:`curvprobe.criteria.validity.regime_flags`).
    """
    from curvprobe.criteria.validity import regime_flags

    parts = ([full] if full is not None else []) + list(subs)
    if not parts:
        raise ValueError("nothing to merge")
    stages: dict[str, float] = {}
    for ds in parts:
        for stage, seconds in _stage_dict(ds).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    strip = lambda ds: ds.drop_vars(["stage_seconds", "stage"], errors="ignore")  # noqa: E731
    sub = None
    if subs:
        sub = strip(subs[0]) if len(subs) == 1 else xr.concat([strip(s) for s in subs], dim="k",
                                                                combine_attrs="override")
    per_estimator = ["value", "stderr", "num_samples"]
    if full is not None and sub is not None:
        full_s = strip(full)
        values = xr.concat([full_s[per_estimator], sub[per_estimator]], dim="estimator")
        merged = sub.drop_vars(per_estimator).drop_vars("estimator")
        merged = merged.assign(a=full_s["a"])
        merged = xr.merge([merged, values], combine_attrs="override")
        merged.attrs = {**full_s.attrs, **sub.attrs}
    else:
        merged = strip(full) if sub is None else sub
    merged = merged.sel(estimator=[e for e in estimators if e in merged["estimator"].values])
    merged["estimator"] = merged["estimator"].astype(str)
    for variable in merged.variables.values():
        variable.encoding = {}  # file encodings of the parts (string widths...) do not carry over
    stage_seconds = ("stage", np.array(list(stages.values()), dtype=float),
                     {"long_name": "wall time per stage, summed over parts", "units": "s"})
    merged = merged.assign_coords(stage=("stage", np.asarray(list(stages), dtype=str)))
    merged = merged.assign(stage_seconds=stage_seconds)
    if config is not None:
        merged.attrs["run_config"] = config.numeric_dict()
        merged.attrs["model_source"] = config.model
    merged.attrs["estimator_parts"] = ("full-space estimators from one all-k call; subspace estimators "
                                       "from one call per k (warm-started)" if config is None or
                                       config.subspace == "per_k" else
                                       "full-space estimators from one all-k call; subspace estimators "
                                       "with one U_D from H^(K) (fixed)")
    if validity is not None:
        merged = regime_flags(merged, validity)
    return merged
