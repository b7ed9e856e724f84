"""``curvprobe curriculum``: the paper's k-decay protocol on a built-in model, seeds in parallel.

Each seed trains a built-in model from initialisation (``TinyGPT`` on
windows of the standard-library corpus, or the MLP on its synthetic task) on
ordered training samples, ``batch_size`` per AdamW step, and — whenever the
samples seen reach k + 1 for the next k of the grid — evaluates the criteria
at the current weights with the first k and k + 1 samples
(:func:`curvprobe.criteria.protocol.measure_at`), plus the loss on held-out
validation samples. The seeds differ in initialisation, sample order and
Monte Carlo draws; they run as separate processes (``multiprocessing`` with
``spawn``, one torch thread each). The merge
(:func:`curvprobe.criteria.protocol.merge_seeds`) keeps every seed's values
and adds the mean and standard deviation across seeds.

A run directory holds::

    settings.json           the settings (``--resume`` refuses different ones)
    seed_<s>/k_000008.nc    seed s at k = 8: the criteria, the step, the samples seen,
                            the training and validation loss
    seed_<s>/state.pt       model, optimiser and position after the last finished k
    curriculum.nc           the merge over seeds
    curriculum.png          criteria against k (mean ± std band, seeds thin), validation
                            loss on a second axis
    summary.md              the table of the figure

Resuming: a killed run continues with ``resume=True`` (``--resume``). Each
seed restarts from its ``state.pt`` — training is deterministic on one
thread, so it retraces the same weights — and skips the k whose file exists;
the merged result equals that of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xarray as xr

from curvprobe.app.runs import RunError
from curvprobe.core.problem import Problem
from curvprobe.criteria.protocol import due, k_grid, measure_at, merge_seeds
from curvprobe.criteria.spec import StabilizationSpec
from curvprobe.results import atomic_write, load, save

__all__ = ["QUICK", "CurriculumSettings", "merged_result", "parse_list", "run_curriculum", "run_seed",
           "settings_from"]

SETTINGS_FILE = "settings.json"
RESULT_FILE = "curriculum.nc"
MODELS = ("tiny-gpt", "mlp")
#: Testing aid: seconds to sleep after each finished k (lets a test kill a run mid-way).
K_DELAY_ENV = "CURVPROBE_CURRICULUM_DELAY"


@dataclass(frozen=True)
class CurriculumSettings:
    """What one curriculum run measures (every field is a ``curvprobe curriculum`` flag).

    ``ks`` is the grid (default 6 log-spaced k from 8 to 256); the criteria are
    those of :class:`~curvprobe.criteria.spec.StabilizationSpec` with the
    same names; ``batch_size`` samples per training step, AdamW at a constant
    ``lr``; ``validation_samples`` held-out samples give the validation loss;
    ``probe_batch`` bounds the samples per forward or HVP chunk.
    """

    model: str = "tiny-gpt"
    ks: tuple[int, ...] = k_grid(8, 256, 6)
    seeds: tuple[int, ...] = (0, 1)
    sigmas: tuple[float, ...] = (1e-3,)
    dims: tuple[int, ...] = (1, 4)
    estimators: tuple[str, ...] = ("delta1", "full_mc", "direct_mc", "gm")
    mc_samples: int = 16
    batch_size: int = 8
    lr: float = 1e-3
    validation_samples: int = 128
    tol: float = 1e-3
    probe_batch: int = 64
    point_batch: int = 8

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise RunError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        for name in ("ks", "seeds", "sigmas", "dims", "estimators"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise RunError(f"seeds must be distinct and non-empty, got {list(self.seeds)}")
        for name in ("batch_size", "validation_samples", "probe_batch", "point_batch"):
            if int(getattr(self, name)) < 1:
                raise RunError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise RunError(f"lr must be > 0, got {self.lr}")
        try:
            self.spec(0)
        except ValueError as exc:
            raise RunError(f"curriculum: {exc}") from None

    def spec(self, seed: int) -> StabilizationSpec:
        """The measurement at every k of seed ``seed`` (its draws seeded by it)."""
        return StabilizationSpec(ks=self.ks, sigmas=self.sigmas, dims=self.dims, estimators=self.estimators,
                                 mc_samples=self.mc_samples, seed=seed, tol=self.tol,
                                 point_batch=self.point_batch, subspace="per_k")

    @property
    def num_train(self) -> int:
        """Training samples each seed reads: ``max(ks) + 1``, rounded up to whole steps."""
        steps = -(-(max(self.ks) + 1) // self.batch_size)
        return steps * self.batch_size

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready ``{field: value}`` (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


QUICK = CurriculumSettings(ks=k_grid(4, 64, 5), mc_samples=8, batch_size=4, validation_samples=64)
"""Small settings: 5 k from 4 to 64, S = 8 (``curvprobe curriculum --quick``)."""


# ----------------------------------------------------------------- one seed
def _setup(settings: CurriculumSettings, seed: int) -> tuple[torch.nn.Module, Callable, tuple, tuple]:
    """The untrained model of ``seed``, its per-sample loss, and the ordered training and
    validation ``(inputs, targets)``: training samples in the order of ``seed``,
    validation samples shared by every seed (held out from training)."""
    from curvprobe.zoo import data, models

    if settings.model == "tiny-gpt":
        config = models.GPTConfig()
        train = data.token_sequences(settings.num_train, config.seq_len, seed=seed, split="train")
        valid = data.token_sequences(settings.validation_samples, config.seq_len, split="probe")
        return models.TinyGPT(config, seed=seed), models.token_cross_entropy, train, valid
    mlp = models.MLPConfig()
    train = data.synthetic_classification(settings.num_train, mlp.widths[0], mlp.widths[-1], seed=seed)
    valid = data.synthetic_classification(settings.validation_samples, mlp.widths[0], mlp.widths[-1],
                                          seed=10_000)
    return models.MLP(mlp, seed=seed), models.sample_cross_entropy, train, valid


def _mean_loss(model: torch.nn.Module, loss_fn: Callable, samples: tuple, batch: int) -> float:
    """Mean per-sample loss of ``model`` over ``samples`` (float64 accumulation)."""
    total = 0.0
    with torch.no_grad():
        for a in range(0, samples[0].shape[0], batch):
            total += float(loss_fn(model(samples[0][a:a + batch]), samples[1][a:a + batch]).double().sum())
    return total / samples[0].shape[0]


def _measure(settings: CurriculumSettings, seed: int, k: int, model: torch.nn.Module, loss_fn: Callable,
             train: tuple, valid: tuple, record: dict[str, float]) -> xr.Dataset:
    """The criteria at k with the first k + 1 training samples at the current weights,
    and the per-k record (step, samples seen, losses) as variables over k."""
    model.eval()
    t0 = time.perf_counter()
    problem = Problem(model, loss_fn, train[0][:k + 1], train[1][:k + 1], batch_size=settings.probe_batch)
    ds = measure_at(problem, k, settings.spec(seed))
    record = {**record, "validation_loss": _mean_loss(model, loss_fn, valid, settings.probe_batch),
              "seconds": time.perf_counter() - t0}
    names = {"step": "optimiser steps taken", "seen": "training samples seen",
             "train_loss": "minibatch loss of the last step", "validation_loss":
             "mean loss over the validation samples", "seconds": "wall time of the measurement"}
    units = {"step": "1", "seen": "1", "train_loss": "loss", "validation_loss": "loss", "seconds": "s"}
    for name, value in record.items():
        ds[name] = ("k", [value], {"long_name": names[name], "units": units[name]})
    ds.attrs.update(per_k_variables=list(names), model_source=f"builtin:{settings.model} (from init, seed "
                    f"{seed})", training=f"AdamW lr={settings.lr:g}, batch {settings.batch_size}")
    return ds


def run_seed(settings: CurriculumSettings, seed: int, directory: str | Path) -> Path:
    """Train seed ``seed`` and measure every k of the grid into ``directory``; resumable.

    Runs single-threaded (deterministic training, so a resumed seed retraces
    the same weights). Returns the directory.
    """
    import os

    torch.set_num_threads(1)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, loss_fn, train, valid = _setup(settings, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    state_path = directory / "state.pt"
    step, start, last_loss = 0, 0, float("nan")
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, start, last_loss = int(state["step"]), int(state["next"]), float(state["train_loss"])
    ks, b = settings.ks, settings.batch_size
    while start < len(ks):
        for j in due(step * b, ks, start):
            part = directory / f"k_{ks[j]:06d}.nc"
            if not part.exists():
                record = {"step": step, "seen": step * b, "train_loss": last_loss}
                ds = _measure(settings, seed, ks[j], model, loss_fn, train, valid, record)
                save(ds, part, overwrite=True)
            start = j + 1
            _save_state(state_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                     "next": start, "train_loss": last_loss})
            time.sleep(float(os.environ.get(K_DELAY_ENV, "0") or 0))
        if start >= len(ks):
            break
        model.train()
        x, y = train[0][step * b:(step + 1) * b], train[1][step * b:(step + 1) * b]
        loss = loss_fn(model(x), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step, last_loss = step + 1, float(loss.detach())
    return directory


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _run_seed_args(args: tuple[CurriculumSettings, int, str]) -> str:
    return str(run_seed(*args))


def _exit_with_parent() -> None:
    """Pool initializer: end this worker within a second of its parent's death (a killed
    run must not leave seeds writing into the directory a resumed run then uses)."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# ----------------------------------------------------------------- the run
def _check_directory(settings: CurriculumSettings, out: Path, resume: bool) -> None:
    path = out / SETTINGS_FILE
    if not path.exists():
        if out.exists() and any(out.iterdir()) and not resume:
            raise RunError(f"{out} is not empty and holds no curriculum run; choose another --out")
        return
    if not resume:
        raise RunError(f"{out} already holds a curriculum run; pass --resume to continue it, or choose "
                       "another --out")
    stored = json.loads(path.read_text())
    mine = settings.as_dict()
    diff = [key for key in mine if stored.get(key) != mine[key]]
    if diff:
        raise RunError(f"--resume: {out} was started with different settings: {diff[0]} = "
                       f"{stored.get(diff[0])!r} there, {mine[diff[0]]!r} now")


def merged_result(settings: CurriculumSettings, out: str | Path) -> xr.Dataset:
    """The merge over seeds of the per-k files in ``out`` (every seed must be finished)."""
    out = Path(out)
    per_seed = {}
    for seed in settings.seeds:
        files = [out / f"seed_{seed}" / f"k_{k:06d}.nc" for k in settings.ks]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise RunError(f"seed {seed} has not finished: {', '.join(missing)} missing in {out}")
        parts = [load(f) for f in files]
        per_seed[seed] = xr.concat(parts, dim="k", data_vars="all", coords="minimal", compat="override",
                                   combine_attrs="override")
    ds = merge_seeds(per_seed)
    ds.attrs.update(curriculum_settings=settings.as_dict(),
                    protocol="train from init on ordered samples; at each k of the grid, once k+1 samples "
                             "are seen, the criteria with the first k and k+1 samples at the current weights")
    for variable in ds.variables.values():
        variable.encoding = {}
    return ds


def run_curriculum(settings: CurriculumSettings, out: str | Path, *, resume: bool = False, workers: int = 2,
                   log: Callable[[str], None] | None = None) -> xr.Dataset:
    """Run (or resume) the protocol for every seed of ``settings`` into ``out``.

    Parameters
    ----------
    settings : CurriculumSettings
        What to measure.
    out : str or PathLike
        Run directory (see the module docstring).
    resume : bool
        Continue the run in ``out`` (refused if its settings differ).
    workers : int
        Seeds trained at once, each in its own process with one thread (1:
        in this process, one after the other).
    log : callable, optional
        Receives one-line status messages.

    Returns
    -------
    xarray.Dataset
        :func:`~curvprobe.criteria.protocol.merge_seeds` of the seeds (also
        ``curriculum.nc``, with ``curriculum.png`` and ``summary.md``).
    """
    say = log or (lambda message: None)
    out = Path(out).resolve()
    _check_directory(settings, out, resume)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SETTINGS_FILE, lambda h: h.write(json.dumps(settings.as_dict(), indent=2)), "w")
    tasks = [(settings, seed, str(out / f"seed_{seed}")) for seed in settings.seeds]
    t0 = time.perf_counter()
    say(f"{len(tasks)} seed(s), {len(settings.ks)} k from {min(settings.ks)} to {max(settings.ks)}, "
        f"{min(workers, len(tasks))} process(es)")
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)),
                                                       initializer=_exit_with_parent) as pool:
            for done in pool.imap_unordered(_run_seed_args, tasks):
                say(f"finished {Path(done).name} ({time.perf_counter() - t0:.0f} s)")
    else:
        for task in tasks:
            say(f"finished {Path(_run_seed_args(task)).name} ({time.perf_counter() - t0:.0f} s)")
    ds = merged_result(settings, out)
    save(ds, out / RESULT_FILE, overwrite=True)
    _figure_and_summary(ds, out, time.perf_counter() - t0)
    return ds


def _figure_and_summary(ds: xr.Dataset, out: Path, seconds: float) -> None:
    from curvprobe.app.plots import plot_curriculum, save_figure
    from curvprobe.app.report import curriculum_markdown

    save_figure(plot_curriculum(ds), out / "curriculum.png")
    notes = [f"run directory: {out}", f"wall time this session: {seconds:.0f} s"]
    text = curriculum_markdown(ds, notes=notes)
    atomic_write(out / "summary.md", lambda h: h.write(text), "w")


def settings_from(values: dict[str, Any], base: CurriculumSettings | None = None) -> CurriculumSettings:
    """``base`` (default :class:`CurriculumSettings`) with the non-None ``values`` replaced."""
    base = base or CurriculumSettings()
    changes = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(base, **changes)


def parse_list(text: str, kind: type) -> tuple:
    """``"8,16,32"`` → ``(8, 16, 32)`` with ``kind`` applied (a flag's comma-separated list)."""
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise RunError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
