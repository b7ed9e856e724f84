"""Resumable probe runs: a stabilization measurement written to disk part by part.

A run directory holds::

    config.toml            the resolved config (``--resume`` refuses a different one)
    sources.json           SHA-256 of the checkpoint and data files (checked on resume)
    parts/validity.nc      quadratic-validity sweep at k = max(ks)   (if enabled)
    parts/fullspace.nc     delta1, full_mc, sphere over the whole k grid (the all-k
                           engine needs every k at once)
    parts/k_000010.nc      subspace estimators at k = 10 (``subspace = "per_k"``) ...
    parts/k_000010.eig.pt  ... and the top-D eigenvectors of H^(10) (float64), the
                           warm start of the next k (only the last finished k's file is kept)
    parts/subspace_fixed.nc  subspace estimators for every k (``subspace = "fixed"``)
    stabilization.nc       the merged result
    timings.json           wall time and torch threads per part, and per session (not in the .nc: it differs
                           between an interrupted and an uninterrupted run)

The parts are those of :func:`curvprobe.criteria.sweep.iter_parts` for the
config's :class:`~curvprobe.criteria.spec.StabilizationSpec` (with
``resumable=True``); this module only stores them. Each part is written
atomically (temporary file + rename) the moment it is finished. With
``resume=True`` the parts on disk are skipped and the next k warm-starts its
eigensolver from the last saved eigenvectors, exactly as the uninterrupted
run did (a resumable spec makes each k depend on the previous one only
through those vectors; Monte Carlo draws are keyed by ``(seed, stream,
draw)``), and the merged file is always assembled from the part files on
disk. So a resumed run ends with the same ``stabilization.nc`` as an
uninterrupted one with the same config, up to the ``stage_seconds`` timing
variable.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xarray as xr

from curvprobe.app import _progress
from curvprobe.app.config import ConfigError, ProbeConfig, load_config
from curvprobe.core.distributed import Shard, barrier, broadcast_object, world
from curvprobe.core.problem import Problem
from curvprobe.criteria.sweep import Part, iter_parts, merge_parts, part_names
from curvprobe.criteria.validity import quadratic_validity
from curvprobe.linalg import eigensolver_memory
from curvprobe.results import atomic_write, load, save

__all__ = ["RunError", "RunOutcome", "default_out", "run_probe"]

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
    """``runs/<UTC timestamp>`` (absolute, under the working directory; rank 0's on every rank)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return broadcast_object(str((Path.cwd() / prefix / stamp).resolve()), world())


def _write_json(path: Path, payload: dict) -> None:
    atomic_write(path, lambda h: h.write(json.dumps(payload, indent=2, sort_keys=True)), "w")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stage_dict(ds: xr.Dataset) -> dict[str, float]:
    if "stage_seconds" not in ds:
        return {}
    return {str(s): float(v) for s, v in zip(ds["stage"].values, ds["stage_seconds"].values)}


class _RunDirectory:
    """The files of one run directory: parts, the last k's eigenvectors, ``timings.json``.

    ``timings.json`` holds the wall time, stage seconds and torch thread count (``--threads
    auto`` may change it between parts) of every part and a
    summary per session (what it computed and skipped). In a data-parallel run
    every rank computes every part and rank 0 alone writes; each write ends in
    a barrier, so every rank then reads the same files.
    """

    def __init__(self, out: Path, outcome: RunOutcome, group: Shard) -> None:
        self.out, self.group = out, group
        self.parts = out / PARTS_DIR
        if group.is_writer:
            self.parts.mkdir(parents=True, exist_ok=True)
            for stale in self.parts.glob(".*.tmp"):  # temporary files of a killed run
                stale.unlink(missing_ok=True)
        barrier(group)
        self.outcome = outcome
        self.timings_path = out / TIMINGS_FILE
        self.timings = _read_json(self.timings_path) or {"parts": {}, "sessions": []}
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.session: dict[str, Any] = {"started": started, "computed": [], "skipped": []}
        self.timings.setdefault("parts", {})
        self.timings.setdefault("sessions", []).append(self.session)
        self.t0 = time.perf_counter()

    def path(self, name: str) -> Path:
        return self.parts / f"{name}.nc"

    def finished(self, names: Iterable[str]) -> set[str]:
        """The parts among ``names`` already on disk (recorded as skipped)."""
        done = {n for n in names if self.path(n).exists()}
        for name in sorted(done):
            self.outcome.skipped.append(name)
            self.session["skipped"].append(name)
        return done

    def warm_start(self, finished: Iterable[str]) -> torch.Tensor | None:
        """The eigenvectors of the last finished k (float64, CPU), if any."""
        saved = [self.parts / f"{n}.eig.pt" for n in sorted(finished) if n.startswith("k_")]
        saved = [path for path in saved if path.exists()]
        if not saved:
            return None
        return torch.load(saved[-1], map_location="cpu", weights_only=True)["vectors"]

    def store(self, name: str, ds: xr.Dataset, vectors: torch.Tensor | None = None) -> None:
        """Save a finished part (and its eigenvectors, replacing the previous k's)."""
        if self.group.is_writer:
            if vectors is not None:
                eig_path = self.parts / f"{name}.eig.pt"
                atomic_write(eig_path, lambda h: torch.save({"vectors": vectors}, h))
            save(ds, self.path(name), overwrite=True)
            if vectors is not None:
                for stale in self.parts.glob("k_*.eig.pt"):  # only the last finished k's are needed
                    if stale.name != f"{name}.eig.pt":
                        stale.unlink(missing_ok=True)
        seconds, self.t0 = time.perf_counter() - self.t0, time.perf_counter()
        self.timings["parts"][name] = {"seconds": round(seconds, 4), "stage_seconds": _stage_dict(ds),
                                       "torch_threads": torch.get_num_threads()}
        self.session["computed"].append(name)
        self.outcome.computed.append(name)
        self.flush()
        barrier(self.group)
        delay = float(os.environ.get(PART_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)

    def flush(self, total: float | None = None) -> None:
        if total is not None:
            self.session["seconds"] = round(total, 3)
        if self.group.is_writer:
            _write_json(self.timings_path, self.timings)


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


def _validity(problem: Problem, config: ProbeConfig, run: _RunDirectory, progress: bool,
              say: Callable[[str], None]) -> xr.Dataset:
    """The quadratic-validity sweep at k = max(ks): computed once, then read from its part."""
    if not run.finished(["validity"]):
        say(f"quadratic validity at k = {config.max_k} ({config.validity_samples} draws x "
            f"{len(config.sigmas)} σ)")
        with _progress.bar(config.validity_samples * len(config.sigmas), "validity sweep",
                           show=progress and run.group.is_writer, unit="pt") as pbar, \
                _progress.counting(problem, on_points=pbar.update):
            run.store("validity", quadratic_validity(
                problem, list(config.sigmas), k=config.max_k, mc_samples=config.validity_samples,
                seed=config.seed, threshold=config.validity_threshold, point_batch=config.point_batch))
    return load(run.path("validity"))  # the same object for a fresh and a resumed run


def _compute_parts(problem: Problem, config: ProbeConfig, run: _RunDirectory, progress: bool,
                   between_stages: Callable[[], object]) -> list[str]:
    """Compute and store every part not on disk, calling ``between_stages``
    after each; returns all part names in order."""
    spec = config.spec()
    names = part_names(spec)
    skip = run.finished(names)
    with _progress.bar(len(names), "stabilization parts (HVPs, points)",
                       show=progress and run.group.is_writer, initial=len(skip), unit="part") as bar:
        counts = {"HVPs": 0, "points": 0}

        def count(key: str) -> Callable[[int], None]:
            def add(n: int) -> None:
                counts[key] += n
                bar.set_postfix(counts, refresh=True)
            return add

        with _progress.counting(problem, on_points=count("points"), on_hvps=count("HVPs")):
            part: Part
            for part in iter_parts(problem, spec, skip=skip, init=run.warm_start(skip)):
                vectors = None if part.eigenspace is None else \
                    part.eigenspace.vectors.detach().to("cpu", torch.float64).contiguous()
                run.store(part.name, part.dataset, vectors)
                bar.update(1)
                between_stages()
    return names


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device`` (MemAvailable on the host, free memory on
    a CUDA device), or None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(config: ProbeConfig, problem: Problem, *, free: int | None = None) -> None:
    """Refuse, in one line, a run whose eigensolver will not fit in memory.

    The estimate is :func:`curvprobe.linalg.eigensolver_memory` for the run's
    largest D, basis and guard, with a warm start (per-k runs) — the basis
    and solver vectors, not the model's activations, so it is a lower bound
    of the peak. ``free`` defaults to :func:`available_memory`.
    """
    if not config.spec().subspace_names:
        return
    free = available_memory(problem.device) if free is None else free
    D = max(config.dims)
    m = config.basis_size or max(3 * D, D + 40)
    need = eigensolver_memory(problem.num_params, max(D + 2, m), getattr(torch, config.basis_dtype), D=D,
                              guard_steps=config.guard_steps, warm_start=config.subspace == "per_k")
    if free is not None and need > free:
        gib = 2**30
        raise RunError(f"the eigensolver needs ≈ {need / gib:.1f} GiB (basis_size {m} × N = "
                       f"{problem.num_params:,} in {config.basis_dtype}, D = {D}) but {free / gib:.1f} GiB "
                       f"are free on {problem.device}: set basis_dtype = \"float32\" and/or a smaller "
                       f"basis_size (≥ {D + 2})")


def _open(config: ProbeConfig, problem: Problem | None, resume: bool, progress: bool,
          digests: dict[str, str] | None) -> tuple[ProbeConfig, Problem, _RunDirectory, bool]:
    """Check the run directory and the sources, build the problem, write a new run's config."""
    config = config if config.out else config.replace(out=default_out())
    out = Path(config.out)
    resuming = _check_directory(config, out, resume)
    if problem is None:
        from curvprobe.app.sources import build_problem

        loaded = build_problem(config, progress=progress, distributed=world().size > 1)
        problem, digests = loaded.problem, loaded.digests
    digests = digests or {}
    _check_sources(out, digests, resuming)
    if config.max_k + 1 > problem.num_samples:
        raise RunError(f"k = {config.max_k} is larger than the data: it needs {config.max_k + 1} samples, "
                       f"the problem has {problem.num_samples}")
    check_memory(config, problem)
    barrier(problem.shard)  # every rank has checked the directory before rank 0 writes to it
    if not resuming and problem.shard.is_writer:
        config.write(out / CONFIG_FILE, header="curvprobe probe run: resolved config (do not edit; "
                     "--resume compares against it)")
        _write_json(out / SOURCES_FILE, digests)
    run = _RunDirectory(out, RunOutcome(out, xr.Dataset()), problem.shard)
    return config, problem, run, resuming


def run_probe(config: ProbeConfig, *, problem: Problem | None = None, resume: bool = False,
              progress: bool = False,
              validity: xr.Dataset | None = None, digests: dict[str, str] | None = None,
              log: Callable[[str], None] | None = None,
              between_stages: Callable[[], object] | None = None) -> RunOutcome:
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
    between_stages : callable, optional
        Called after each stored part (the CLI's ``--threads auto``
        re-decides there: :meth:`curvprobe.app.threads.AutoThreads.between_stages`).

    Returns
    -------
    RunOutcome
        With the merged Dataset (also saved as ``stabilization.nc``).
    """
    say = log or (lambda message: None)
    t_start = time.perf_counter()
    config, problem, run, resuming = _open(config, problem, resume, progress, digests)
    if not problem.shard.is_writer:  # rank 0 speaks for a data-parallel run
        say = lambda message: None  # noqa: E731
    say(f"{'resuming the' if resuming else 'new'} run in {run.out}")
    if validity is None and config.validity:
        validity = _validity(problem, config, run, progress, say)
    say(f"stabilization parts of {len(config.ks)} k values")
    names = _compute_parts(problem, config, run, progress, between_stages or (lambda: None))
    say("merging parts")
    merged = merge_parts([load(run.path(n)) for n in names], config.estimators, validity=validity)
    merged.attrs.update(run_config=config.numeric_dict(), model_source=config.model,
                        ranks=problem.shard.size)
    if problem.shard.is_writer:
        save(merged, run.out / RESULT_FILE, overwrite=True)
    run.outcome.seconds = time.perf_counter() - t_start
    run.flush(total=run.outcome.seconds)
    run.outcome.dataset = merged
    return run.outcome
