"""The ``curvprobe`` command.

Subcommands::

    curvprobe demo [--quick] [--out DIR]        the whole measurement on the built-in transformer
    curvprobe probe [CONFIG] [--key value ...]  a resumable stabilization run (--resume to continue)
    curvprobe validity [CONFIG] [--k K] ...     the quadratic-validity σ sweep
    curvprobe plot PATH [--out DIR]             figures from a results file or a run directory
    curvprobe spectrum [CONFIG] [--top-k K] ... per-layer spectral exponents (α, γ, s)
    curvprobe curriculum [--seeds 0,1] ...      the paper's k-decay protocol: train from init, measure each k
    curvprobe info                              versions, threads, devices, cache

Every config key is a flag (``--mc-samples 32``; lists comma-separated:
``--ks 10,20,40``); flags override the config file. Bad input ends the
command with a one-line ``curvprobe: error: ...`` on stderr and exit status 2
(no traceback; ``--debug`` shows one); nothing already on disk is overwritten
by a failed command. Progress bars go to stderr, only on a terminal and
without ``--quiet`` (without a terminal, status lines, such as one per
finished batch of validity draws); results (tables) go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from curvprobe.app import _progress
from curvprobe.app.config import FIELDS, ConfigError

if TYPE_CHECKING:
    import xarray as xr

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), no abbreviated flags, and negative
    numbers (``-1e-3``, ``-1,2``) read as values rather than flags."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _parse_optional(self, arg_string):
        if _is_number_list(arg_string):
            return None
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"curvprobe: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_BAD_INPUT)


# ----------------------------------------------------------------- helpers
def _is_number_list(text: str) -> bool:
    """Whether ``text`` starts with '-' and is a number or a comma-separated list of numbers."""
    if not text.startswith("-"):
        return False
    try:
        [float(part) for part in text.split(",")]
    except ValueError:
        return False
    return True


def check_output_dir(path: str | os.PathLike) -> None:
    """Check, before any compute, that the output directory ``path`` can be created and written.

    Nothing is left on disk: a temporary directory is made and removed in ``path``
    or in its nearest existing ancestor.

    Raises
    ------
    ConfigError
        ``path`` (or an ancestor) is a file, or the location is not writable.
    """
    import tempfile

    target = Path(path).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == target and not target.is_dir():
        raise ConfigError(f"output directory {target} is a file, not a directory; choose another --out")
    if not existing.is_dir():
        raise ConfigError(f"output directory {target} cannot be created ({existing} is a file); "
                          "choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".curvprobe-check-"))
    except OSError as exc:
        raise ConfigError(f"output directory {target} is not writable ({exc.strerror or exc}); "
                          "choose another --out") from None


def _say(args) -> Callable[[str], None]:
    if getattr(args, "quiet", False) or not _is_writer():
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def _busy_hint(args) -> None:
    """The ``--threads auto`` line (count and why, again whenever it changes between stages), or
    with an explicit ``--threads N`` a note when the machine is too busy for N threads: torch's
    OpenMP threads wait for each other and run many times slower then
    (:mod:`curvprobe.app.threads`)."""
    from curvprobe.app import threads

    say, n = _say(args), getattr(args, "threads", None)
    auto = getattr(args, "auto_threads", None)
    if auto is not None:
        auto.announce(say)
    elif isinstance(n, int) and n > 1:
        decision = threads.decide(probe=False)
        if decision.threads < n:
            say(f"note: the machine is busy; --threads auto would use {decision.threads} "
                f"({decision.describe().split('; ', 1)[1]})")


def _threads_arg(text: str) -> int | str:
    """argparse type of ``--threads``: ``auto`` or an integer ≥ 1 (one-line error, exit 2)."""
    from curvprobe.app.threads import parse_threads

    try:
        return parse_threads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _apply_threads(args) -> None:
    """Set torch's intra-op threads from ``--threads``: the count, or with ``auto`` the count
    :func:`curvprobe.app.threads.start_auto` picks now; its
    :class:`~curvprobe.app.threads.AutoThreads` goes to ``args.auto_threads``
    (None otherwise), whose ``between_stages`` the demo, probe and hessian runs call."""
    n = getattr(args, "threads", None)
    args.auto_threads = None
    if n == "auto":
        from curvprobe.app.threads import start_auto

        args.auto_threads = start_auto()
    elif n is not None:
        import torch

        torch.set_num_threads(n)


def _stage_hook(args) -> Callable[[], object] | None:
    """What a run calls between its stages: ``--threads auto`` re-deciding, or None."""
    auto = getattr(args, "auto_threads", None)
    return None if auto is None else auto.between_stages


def _say_with_hint(args) -> Callable[[str], None]:
    """Like :func:`_say`, with :func:`_busy_hint` before the first message (which
    comes after the input has been checked, so errors stay one line)."""
    say, first = _say(args), [True]

    def log(message: str) -> None:
        if first[0]:
            first[0] = False
            _busy_hint(args)
        say(message)

    return log


def _show_progress(args) -> bool:
    return _progress.enabled(getattr(args, "quiet", False)) and _is_writer()


def _is_writer() -> bool:
    """Rank 0 of a torchrun launch, or a single process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def _start_ranks(device: str) -> bool:
    """Under torchrun, join the process group (gloo on CPU, NCCL on CUDA); whether the run is
    data parallel."""
    from curvprobe.core.distributed import init_from_environment, launched_by_torchrun

    if not launched_by_torchrun():
        return False
    init_from_environment(device)
    return True


def _overrides(args) -> dict:
    out = {}
    for field in FIELDS:
        value = getattr(args, field.name, None)
        if value is not None:
            out[field.name] = value
    return out


def _add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("config keys (override the config file; lists comma-separated)")
    for field in FIELDS:
        if field.name in skip:
            continue
        if field.kind == "bool":
            group.add_argument(field.flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=None, help=field.help)
        else:
            metavar = "A,B,..." if field.kind.endswith("_list") else field.name.upper()
            extra = f" [{'|'.join(field.choices)}]" if field.choices and field.kind == "str" else ""
            group.add_argument(field.flag, dest=field.name, default=None, metavar=metavar,
                               help=field.help + extra)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    parser.add_argument("--threads", type=_threads_arg, default="auto", metavar="N|auto",
                        help="torch intra-op threads (default auto: one per CPU free of other work, "
                             "re-checked between stages; see `curvprobe info`)")


def _check_fresh(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it, or choose another --out")


# ----------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    """``curvprobe demo``: the whole measurement on the built-in tiny transformer.

    Returns the exit status.
    """
    from curvprobe.app.demo import run_demo
    from curvprobe.app.runs import default_out

    if args.resume:
        _check_resumable(args.out)
    args.out = args.out or default_out()
    check_output_dir(args.out)
    result = run_demo(args.out, quick=args.quick, progress=_show_progress(args), log=_say_with_hint(args),
                      resume=args.resume, between_stages=_stage_hook(args))
    print(result.summary)
    print(f"results, figures and summary.md in {result.out}")
    return 0


def _probe_config(args):
    from curvprobe.app.config import load_config

    path = args.config
    if args.resume and args.out:
        _check_resumable(args.out)
        stored = Path(args.out) / "config.toml"
        if path is None and stored.exists():
            path = stored
    config = load_config(path, _overrides(args))
    if args.resume:
        _check_resumable(config.out)
    return config


def _check_resumable(out: str | None) -> None:
    if not (out and Path(out).is_dir()):
        raise ConfigError(f"--resume: there is no run directory at {out or '(no --out given)'}; "
                          "pass the --out of the run to continue, or drop --resume to start one")


def cmd_probe(args) -> int:
    """``curvprobe probe``: a resumable stabilization run from a TOML config and flags.

    Returns the exit status.
    """
    from curvprobe.app.report import summary_markdown
    from curvprobe.app.runs import default_out, run_probe
    from curvprobe.results import atomic_write

    config = _probe_config(args)
    check_output_dir(config.out or "runs")
    _start_ranks(config.device)
    if not config.out:
        config = config.replace(out=default_out())
    say = _say_with_hint(args)
    outcome = run_probe(config, resume=args.resume, progress=_show_progress(args), log=say,
                        between_stages=_stage_hook(args))
    if not _is_writer():
        return 0
    if outcome.skipped:
        say(f"resumed: kept {len(outcome.skipped)} finished part(s), computed {len(outcome.computed)}")
    summary = summary_markdown(outcome.dataset, title="curvprobe probe summary",
                               notes=[f"run directory: {outcome.directory}",
                                      f"wall time this session: {outcome.seconds:.1f} s"])
    atomic_write(outcome.directory / "summary.md", lambda handle: handle.write(summary), "w")
    print(summary)
    print(f"results: {outcome.result_path}  (figures: curvprobe plot {outcome.directory})")
    return 0


def cmd_validity(args) -> int:
    """``curvprobe validity``: the quadratic-validity σ sweep at one k.

    Returns the exit status.
    """
    from curvprobe.app.config import load_config
    from curvprobe.app.plots import plot_validity, save_figure
    from curvprobe.app.report import table
    from curvprobe.app.runs import default_out
    from curvprobe.app.sources import build_problem
    from curvprobe.criteria.validity import quadratic_validity
    from curvprobe.results import save

    config = load_config(args.config, _overrides(args), required=("model", "sigmas"))
    k = args.k
    if k is None:
        k = config.max_k if args.ks is not None or (args.config and "ks" in _file_keys(args.config)) \
            else (config.num_data or None)
    if k is None:
        raise ConfigError("validity needs the sample count: pass --k K (or ks / num_data in the config)")
    k = int(k)
    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")
    distributed = _start_ranks(config.device)
    out = Path(config.out or default_out())
    target = out / "validity.nc"
    _check_fresh(target, args.overwrite)
    check_output_dir(out)
    config = config.replace(ks=[max(k - 1, 1)], num_data=config.num_data or k)
    loaded = build_problem(config, progress=_show_progress(args), distributed=distributed)
    if k > loaded.problem.num_samples:
        raise ConfigError(f"k = {k} is larger than the data ({loaded.problem.num_samples} samples)")
    if _is_writer():
        _busy_hint(args)
    _say(args)(f"quadratic validity at k = {k}: {len(config.sigmas)} σ x {config.validity_samples} draws")
    with _validity_progress(args, loaded.problem, config, k):
        ds = quadratic_validity(loaded.problem, list(config.sigmas), k=k,
                                mc_samples=config.validity_samples, seed=config.seed,
                                threshold=config.validity_threshold, point_batch=config.point_batch)
    ds.attrs["model_source"] = config.model
    if not _is_writer():
        return 0
    save(ds, target, overwrite=True)
    save_figure(plot_validity(ds), out / "validity.png")
    rows = [[f"{s:.3g}", f"{m:.3g}", f"{sd:.3g}", "yes" if v else "no"]
            for s, m, sd, v in zip(ds["sigma"].values, ds["rel_error_mean"].values,
                                   ds["rel_error_std"].values, ds["valid"].values)]
    print(table(["σ", "mean rel. error", "std", "validated"], rows))
    print(f"validated regime: σ ≤ {ds.attrs['validated_sigma_max']:.3g}")
    print(f"results: {target}")
    return 0


@contextlib.contextmanager
def _validity_progress(args, problem, config, k: int) -> Iterator[None]:
    """Progress of the validity sweep: on a terminal a bar over the samples of every pass over
    the data (loss, gradient, then per batch of draws one HVP pass and one pass per σ), else a
    log line per finished batch of draws (none with ``--quiet``)."""
    show = _show_progress(args)
    batches = -(-config.validity_samples // config.point_batch)
    passes = 2 + batches * (1 + len(config.sigmas))
    log = _progress.DrawLog(_say(args) if not show else (lambda message: None), "validity",
                            draws=config.validity_samples, batch=config.point_batch,
                            num_sigmas=len(config.sigmas))
    with _progress.bar(passes * k // problem.shard.size, f"validity sweep ({passes} passes over "
                       f"{k} samples)", show=show, unit="sample") as pbar, \
            _progress.counting(problem, on_points=log, on_samples=pbar.update):
        yield


def _file_keys(path) -> set[str]:
    from curvprobe.app.config import read_toml

    return set(read_toml(path))


def _load_results(path: Path) -> xr.Dataset:
    from curvprobe.results import load

    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        return load(path)
    except Exception as exc:
        raise ConfigError(f"{path} is not a curvprobe results file (netCDF): "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _kind(ds) -> str:
    measurement = ds.attrs.get("measurement", "")
    if measurement in ("stabilization", "quadratic_validity", "mc_convergence", "curriculum_protocol"):
        return measurement
    if "layer" in ds.dims and "rho_delta" in ds:
        return "kronecker_alignment"
    if "layer" in ds.dims and "alpha" in ds:
        return "layer_spectra"
    if "value" in ds and "estimator" in ds.dims and "k" in ds.dims:
        return "stabilization"
    return "unknown"


def cmd_plot(args) -> int:
    """``curvprobe plot``: figures from a results file or a run directory.

    Returns the exit status.
    """
    from curvprobe.app.plots import save_figure, stabilization_figures

    path = Path(args.path)
    found: dict[str, xr.Dataset] = {}
    if path.is_dir():
        candidates = [path / "stabilization.nc", path / "validity.nc", path / "parts" / "validity.nc",
                      path / "mc_convergence.nc", path / "spectra.nc", path / "kronecker.nc",
                      path / "curriculum.nc"]
        for candidate in candidates:
            if candidate.is_file():
                ds = _load_results(candidate)
                found.setdefault(_kind(ds), ds)
        if not found:
            raise ConfigError(f"{path} holds no curvprobe results (stabilization.nc, validity.nc, "
                              "mc_convergence.nc, spectra.nc)")
        out = Path(args.out) if args.out else path
    else:
        ds = _load_results(path)
        found[_kind(ds)] = ds
        out = Path(args.out) if args.out else path.parent
    if "unknown" in found and len(found) == 1:
        raise ConfigError(f"{path}: not a result curvprobe can plot (no 'measurement' attribute it knows)")
    check_output_dir(out)
    stab = found.get("stabilization")
    if stab is not None and "step" in stab.dims:  # a CurriculumProbe file: plot its last step
        _say(args)(f"{path}: curriculum results over {stab.sizes['step']} steps; plotting step "
                   f"{int(stab['step'].values[-1])}")
        found["stabilization"] = stab.isel(step=-1, drop=True)
    out.mkdir(parents=True, exist_ok=True)
    figures = stabilization_figures(found.get("stabilization"), validity=found.get("quadratic_validity"),
                                    convergence=found.get("mc_convergence"))
    if "curriculum_protocol" in found:  # a `curvprobe curriculum` result
        from curvprobe.app.plots import plot_curriculum

        figures["curriculum"] = plot_curriculum(found["curriculum_protocol"])
    if "layer_spectra" in found or "kronecker_alignment" in found:
        from curvprobe.app import plots

        spectra = found.get("layer_spectra")
        if spectra is not None:
            figures["alpha_fits"] = plots.plot_alpha_fits(spectra)
            figures["spectral_transfer"] = plots.plot_spectral_transfer(spectra)
            if "bic" in spectra:
                figures["rank_profile_bic"] = plots.plot_rank_profile_bic(spectra)
        if "kronecker_alignment" in found:
            figures["kronecker"] = plots.plot_kronecker_alignment(found["kronecker_alignment"])
    for name, fig in figures.items():
        print(save_figure(fig, out / f"{name}.png"))
    return 0


def cmd_info(args) -> int:
    """``curvprobe info``: versions, threads, devices, cache location.

    Returns the exit status.
    """
    import importlib.metadata as md
    import platform

    import torch

    from curvprobe._version import __version__
    from curvprobe.zoo import models

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    print(f"curvprobe {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print("packages: " + ", ".join(f"{p} {version(p)}" for p in
                                   ("torch", "numpy", "scipy", "xarray", "matplotlib", "tqdm",
                                    "threadpoolctl", "transformers")))
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    print(f"cpu: {os.cpu_count()} logical cores ({affinity} usable); torch intra-op threads "
          f"{torch.get_num_threads()}, inter-op threads {torch.get_num_interop_threads()}")
    # the package imports lazily: load the BLAS libraries the measurements use, so that
    # their thread pools (and the CURVPROBE_BLAS_THREADS limit) are listed
    import numpy as np  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    for pool in threadpool_info():
        print(f"thread pool: {pool.get('internal_api')} ({pool.get('user_api')}) "
              f"{pool.get('version') or ''} num_threads={pool.get('num_threads')} "
              f"[{Path(pool.get('filepath', '')).name}]")
    from curvprobe.app.threads import decide

    print(f"--threads auto would pick now: {decide().describe().removeprefix('threads: auto → ')}")
    blas_env = os.environ.get("CURVPROBE_BLAS_THREADS", "1 (default)")
    print(f"CURVPROBE_BLAS_THREADS={blas_env}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    print(f"devices: {', '.join(devices)}")
    print(f"process group: {_process_group()}")
    cache = models.cache_directory()
    source = "CURVPROBE_CACHE" if os.environ.get("CURVPROBE_CACHE") else "default"
    files = sorted(cache.glob("*.pt")) if cache.is_dir() else []
    print(f"cache: {cache} ({source}; {'exists' if cache.is_dir() else 'not created yet'})")
    for f in files:
        print(f"  {f.name} ({f.stat().st_size / 1e6:.1f} MB)")
    return 0


def _process_group() -> str:
    """The torch.distributed launch this process belongs to, in words."""
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed not available in this build"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return (f"rank {os.environ.get('RANK', '?')} of {world} (torchrun; backends: gloo"
                f"{', nccl' if dist.is_nccl_available() else ''})")
    return (f"single process (launch data-parallel runs with torchrun --nproc-per-node N -m curvprobe; "
            f"backends available: gloo{', nccl' if dist.is_nccl_available() else ''})")


def cmd_spectrum(args) -> int:
    """``curvprobe spectrum``: per-layer exponents α, γ, s (and Kronecker alignment).

    Returns the exit status.
    """
    from curvprobe.app.config import load_config
    from curvprobe.app.report import kronecker_table, table
    from curvprobe.app.runs import default_out
    from curvprobe.app.sources import build_problem
    from curvprobe.results import save

    try:
        from curvprobe import spectral
    except ImportError as exc:  # pragma: no cover - depends on the spectral package
        raise ConfigError(f"the spectral core is not available: {exc}") from None
    config = load_config(args.config, _overrides(args), required=("model",))
    distributed = _start_ranks(config.device)
    k = args.k
    out = Path(config.out or default_out())
    for name in ("spectra.nc", "kronecker.nc"):
        _check_fresh(out / name, args.overwrite)
    check_output_dir(out)
    n = config.num_data or k or 256
    config = config.replace(ks=[max(n - 1, 1)], num_data=n)
    say = _say(args)
    loaded = build_problem(config, progress=_show_progress(args), distributed=distributed)
    problem = loaded.problem
    if _is_writer():
        _busy_hint(args)
    layers = [x.strip() for x in args.layers.split(",")] if args.layers else None
    top_k = _capped_top_k(problem, layers, args.top_k, say)
    say(f"layer spectra: top-{top_k} gradient singular directions per layer over "
        f"{k or problem.num_samples} samples")
    with _progress.bar(None, "layer spectra (HVP columns)", show=_show_progress(args)) as pbar, \
            _progress.counting(problem, on_hvps=pbar.update):
        spectra = spectral.layer_spectra(problem, layers=layers, top_k=top_k, k=k)
    spectra.attrs["model_source"] = config.model
    if _is_writer():
        save(spectra, out / "spectra.nc", overwrite=True)
    rows = []
    for name in spectra["layer"].values:
        row = spectra.sel(layer=name)
        rows.append([str(name)] + [f"{float(row[v]):.3g}" for v in ("alpha", "gamma", "s_hessian",
                                                                      "predicted_s")])
    if _is_writer():
        print(table(["layer", "α", "γ", "s", "αγ"], rows))
    if args.kronecker:
        say("Kronecker alignment (α = β + φ)")
        kron = spectral.kronecker_alignment(problem, layers=layers, top_k=top_k, k=k)
        kron.attrs["model_source"] = config.model
        if _is_writer():
            save(kron, out / "kronecker.nc", overwrite=True)
            print(kronecker_table(kron))
    if not _is_writer():
        return 0
    from curvprobe.app import plots

    plots.save_figure(plots.plot_alpha_fits(spectra), out / "alpha_fits.png")
    plots.save_figure(plots.plot_spectral_transfer(spectra), out / "spectral_transfer.png")
    if args.kronecker:
        plots.save_figure(plots.plot_kronecker_alignment(kron), out / "kronecker.png")
    print(f"results: {out / 'spectra.nc'}" + (f", {out / 'kronecker.nc'}" if args.kronecker else ""))
    return 0


def _capped_top_k(problem, layers: list[str] | None, top_k: int, say: Callable[[str], None]) -> int:
    """``top_k`` capped at the smallest rank ``min(m, n)`` of the selected layers (with a note)."""
    from curvprobe.spectral.layers import select_layers

    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    chosen = select_layers(problem, layers)
    smallest = min(chosen, key=lambda layer: layer.max_rank)
    if smallest.max_rank >= top_k:
        return top_k
    rows, cols = smallest.matrix_shape
    say(f"note: --top-k {top_k} capped at {smallest.max_rank}, the rank of layer {smallest.name} "
        f"({rows}x{cols} matrix); pass --layers to measure the larger layers at a larger K")
    return smallest.max_rank


def _count_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer ≥ ``low`` (one-line error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def _probability(text: str) -> float:
    """argparse type: a number in (0, 1) (one-line error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a positive finite number (one-line error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text!r}")
    return value


def cmd_hessian(args) -> int:
    """``curvprobe hessian``: the Hessian spectrum report (both ends, trace, density, every layer).

    Returns the exit status.
    """
    from curvprobe.app.config import load_config
    from curvprobe.app.plots import plot_hessian_report, save_figure
    from curvprobe.app.report import hessian_markdown
    from curvprobe.app.runs import default_out
    from curvprobe.app.sources import build_problem
    from curvprobe.results import atomic_write, save
    from curvprobe.spectral.hessian import hessian_report

    config = load_config(args.config, _overrides(args), required=("model",))
    distributed = _start_ranks(config.device)
    out = Path(config.out or default_out())
    _check_fresh(out / "hessian.nc", args.overwrite)
    check_output_dir(out)
    n = config.num_data or args.k or 128
    config = config.replace(ks=[max(n - 1, 1)], num_data=n)
    loaded = build_problem(config, progress=_show_progress(args), distributed=distributed)
    say = _say(args)
    say(f"Hessian report over {args.k or loaded.problem.num_samples} samples: top {args.top}, bottom "
        f"{args.bottom}, trace ({args.trace_matvecs} products), density ({args.density_probes} probes × "
        f"{args.density_steps} steps), top {args.layer_top} of every layer")
    ds = hessian_report(loaded.problem, k=args.k, top=args.top, bottom=args.bottom, layer_top=args.layer_top,
                        tol=config.tol, bottom_tol=args.bottom_tol, layer_tol=args.layer_tol,
                        trace_matvecs=args.trace_matvecs, density_probes=args.density_probes,
                        density_steps=args.density_steps, seed=config.seed, miss_bound=args.miss_bound,
                        guard_steps=args.guard_steps, between_stages=_stage_hook(args))
    ds.attrs["model_source"] = config.model
    if not _is_writer():
        return 0
    save(ds, out / "hessian.nc", overwrite=True)
    summary = hessian_markdown(ds, notes=[f"results: {out / 'hessian.nc'}"])
    atomic_write(out / "summary.md", lambda handle: handle.write(summary), "w")
    save_figure(plot_hessian_report(ds), out / "hessian.png")
    print(summary)
    return 0


def cmd_density(args) -> int:
    """``curvprobe density``: the spectral density of the Hessian (or GGN) by
    stochastic Lanczos quadrature, written as ``density.nc`` and ``density.png``.

    Returns the exit status.
    """
    from curvprobe.app.config import load_config
    from curvprobe.app.plots import plot_spectral_density, save_figure
    from curvprobe.app.runs import default_out
    from curvprobe.app.sources import build_problem
    from curvprobe.linalg import spectral_density
    from curvprobe.results import provenance, save

    config = load_config(args.config, _overrides(args), required=("model",))
    distributed = _start_ranks(config.device)
    out = Path(config.out or default_out())
    _check_fresh(out / "density.nc", args.overwrite)
    n = config.num_data or args.k or 256
    config = config.replace(ks=[max(n - 1, 1)], num_data=n)
    problem = build_problem(config, progress=_show_progress(args), distributed=distributed).problem
    op = (problem.hessian_operator if args.operator == "hessian" else problem.ggn_operator)(args.k)
    _say(args)(f"{args.operator} spectral density over {op.k - op.start} samples: {args.probes} probes × "
               f"{args.steps} Lanczos steps ({args.probes * args.steps} products)")
    sd = spectral_density(op, num_probes=args.probes, lanczos_steps=args.steps, seed=config.seed)
    ds = sd.to_dataset().assign_attrs(provenance(problem, k=op.k - op.start, operator=args.operator,
                                                 model_source=config.model, seed=config.seed))
    if not _is_writer():
        return 0
    save(ds, out / "density.nc", overwrite=True)
    save_figure(plot_spectral_density(ds, title=f"{args.operator} spectral density, {config.model}"),
                out / "density.png")
    print(f"density: {out / 'density.nc'}, figure: {out / 'density.png'} (bandwidth {sd.bandwidth:.3g}, "
          f"trace ≈ {sd.moment(1) * problem.num_params:.4g})")
    return 0


def cmd_curriculum(args) -> int:
    """``curvprobe curriculum``: the paper's k-decay protocol on a built-in model, seeds in parallel.

    Returns the exit status.
    """
    import json

    from curvprobe.app import curriculum_run as cr
    from curvprobe.app.runs import default_out
    from curvprobe.criteria.protocol import k_grid

    out = Path(args.out or default_out())
    base = cr.QUICK if args.quick else cr.CurriculumSettings()
    stored = out / cr.SETTINGS_FILE
    if args.resume and stored.exists():  # the run's own settings, then the flags (compared on resume)
        base = cr.settings_from(json.loads(stored.read_text()))
    ks = cr.parse_list(args.ks, int) if args.ks else None
    if ks is None and any(v is not None for v in (args.k_min, args.k_max, args.k_count, args.spacing)):
        ks = k_grid(args.k_min or min(base.ks), args.k_max or max(base.ks), args.k_count or len(base.ks),
                    args.spacing or "log")
    lists = {"seeds": (args.seeds, int), "sigmas": (args.sigmas, float), "dims": (args.dims, int),
             "estimators": (args.estimators, str)}
    values = {name: cr.parse_list(text, kind) if text else None for name, (text, kind) in lists.items()}
    values.update(model=args.model, ks=ks, mc_samples=args.mc_samples, batch_size=args.batch_size,
                  lr=args.lr, validation_samples=args.validation_samples, tol=args.tol)
    try:
        settings = cr.settings_from(values, base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"curriculum: {exc}") from None
    say = _say_with_hint(args)
    ds = cr.run_curriculum(settings, out, resume=args.resume, workers=args.workers, log=say)
    print((out / "summary.md").read_text())
    print(f"results: {out / cr.RESULT_FILE}  figure: {out / 'curriculum.png'}  ({ds.sizes['seed']} seeds)")
    return 0


# ------------------------------------------------------------------ parser
_EIGEN_KEYS = ("dims", "estimators", "mc_samples", "p", "subspace", "tol", "max_hvps", "basis_size",
               "basis_dtype", "guard_steps", "miss_bound")
"""Config keys of the stabilization measurement alone (hidden from ``validity`` and ``spectrum``)."""

_PROBE_GRID_KEYS = ("ks", "sigmas", "validity", "validity_samples", "validity_threshold", "point_batch",
                    "orderings")
"""Config keys of the probe's k/σ grid and validity sweep (hidden from the spectrum commands)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``curvprobe`` argument parser: one sub-command per ``cmd_*`` function."""
    from curvprobe._version import __version__

    parser = _Parser(prog="curvprobe", description="Curvature-aligned probing of loss landscapes.")
    parser.add_argument("--version", action="version", version=f"curvprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    _add_demo_parser(sub)

    p = sub.add_parser("probe", help="a resumable stabilization run from a TOML config and flags")
    p.add_argument("config", nargs="?", default=None, help="TOML config (see examples/probe.toml)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (refused if its config differs)")
    _add_config_flags(p)
    _common(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("validity", help="quadratic-validity σ sweep")
    p.add_argument("config", nargs="?", default=None, help="TOML config (keys as for probe)")
    p.add_argument("--k", type=int, default=None, help="sample count of L_k (default max(ks) or num_data)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing validity.nc")
    _add_config_flags(p, skip=(*_EIGEN_KEYS, "validity", "orderings"))
    _common(p)
    p.set_defaults(func=cmd_validity)

    p = sub.add_parser("plot", help="figures from a results file or a run directory")
    p.add_argument("path", help="a .nc results file or a directory (demo/probe output)")
    p.add_argument("--out", default=None, help="where the PNGs go (default beside the results)")
    _common(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("spectrum", help="per-layer spectral exponents α, γ, s (and Kronecker alignment)")
    p.add_argument("config", nargs="?", default=None, help="TOML config (keys as for probe)")
    p.add_argument("--k", type=int, default=None, help="samples used (default all)")
    p.add_argument("--top-k", type=int, default=20,
                   help="singular directions per layer (K; capped at the smallest layer rank, with a note)")
    p.add_argument("--layers", default=None, help="comma-separated parameter names or globs")
    p.add_argument("--kronecker", action="store_true", help="also the Kronecker alignment decomposition")
    p.add_argument("--overwrite", action="store_true", help="replace existing spectra.nc / kronecker.nc")
    _add_config_flags(p, skip=(*_EIGEN_KEYS, *_PROBE_GRID_KEYS))
    _common(p)
    p.set_defaults(func=cmd_spectrum)

    _add_hessian_parser(sub)

    p = sub.add_parser("density", help="spectral density of the Hessian (or GGN) by stochastic Lanczos "
                       "quadrature: density.nc and density.png")
    p.add_argument("config", nargs="?", default=None, help="TOML config (keys as for probe)")
    p.add_argument("--k", type=int, default=None, help="samples of L_k (default all: num_data or 256)")
    p.add_argument("--probes", type=int, default=10, help="random probe vectors")
    p.add_argument("--steps", type=int, default=80, help="Lanczos steps per probe")
    p.add_argument("--operator", choices=("hessian", "ggn"), default="hessian",
                   help="the Hessian or the generalized Gauss–Newton matrix")
    p.add_argument("--overwrite", action="store_true", help="replace an existing density.nc")
    _add_config_flags(p, skip=(*_EIGEN_KEYS, *_PROBE_GRID_KEYS))
    _common(p)
    p.set_defaults(func=cmd_density)

    _add_curriculum_parser(sub)

    p = sub.add_parser("info", help="versions, threads, devices, cache location")
    _common(p)
    p.set_defaults(func=cmd_info)
    return parser


def _add_hessian_parser(sub) -> None:
    """The ``hessian`` sub-command's arguments: what to solve, and each part's products."""
    p = sub.add_parser("hessian", help="Hessian spectrum report: top/bottom eigenvalues, trace, density, "
                       "per-layer top eigenvalues")
    p.add_argument("config", nargs="?", default=None, help="TOML config (keys as for probe)")
    p.add_argument("--k", type=int, default=None, help="samples of L_k (default all: num_data or 128)")
    p.add_argument("--top", type=int, default=10, help="eigenpairs at the largest end")
    p.add_argument("--bottom", type=int, default=5, help="eigenpairs at the smallest end")
    p.add_argument("--layer-top", type=int, default=2, help="top eigenvalues of every layer (0: skip)")
    p.add_argument("--bottom-tol", type=_positive_float, default=None, metavar="TOL",
                   help="relative residual of the bottom pairs, as a fraction of the spectral scale "
                        "(largest |θ| seen, ≤ ‖H‖; default --tol)")
    p.add_argument("--layer-tol", type=_positive_float, default=None, metavar="TOL",
                   help="relative residual of every layer's pairs (default --tol)")
    p.add_argument("--trace-matvecs", type=_count_at_least(3), default=30, metavar="M",
                   help="Hutch++ products for tr H (its standard error is reported; 60: the old default)")
    p.add_argument("--density-probes", type=_count_at_least(1), default=4, metavar="P",
                   help="SLQ probe vectors of the density (10: the old default)")
    p.add_argument("--density-steps", type=_count_at_least(1), default=40, metavar="S",
                   help="Lanczos steps per SLQ probe; bandwidth: the width over S (80: the old default)")
    p.add_argument("--miss-bound", type=_probability, default=None, metavar="P",
                   help="certify every eigenspace at this miss bound (its guard runs until the bound "
                        "reaches P, within --guard-steps; default: report the bounds, certify nothing)")
    p.add_argument("--guard-steps", type=_count_at_least(0), default=10, metavar="J",
                   help="Lanczos steps of each missed-eigenvalue guard (raise with --miss-bound)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing hessian.nc")
    _add_config_flags(p, skip=(*(key for key in _EIGEN_KEYS if key != "tol"), *_PROBE_GRID_KEYS))
    _common(p)
    p.set_defaults(func=cmd_hessian)


def _add_demo_parser(sub) -> None:
    """The ``demo`` sub-command's parser."""
    p = sub.add_parser("demo", help="the whole measurement on the built-in tiny transformer")
    p.add_argument("--quick", action="store_true", help="smaller settings (≤ 2 minutes)")
    p.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted demo in --out (finished stages and parts are kept)")
    _common(p)
    p.set_defaults(func=cmd_demo)


def _add_curriculum_parser(sub) -> None:
    """The ``curriculum`` sub-command's parser (its own flags, not the config keys)."""
    p = sub.add_parser("curriculum", help="the paper's k-decay protocol: train from init, measure at each k")
    p.add_argument("--out", default=None, help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same settings)")
    p.add_argument("--quick", action="store_true", help="small settings: 5 k from 4 to 64, S = 8")
    p.add_argument("--model", choices=("tiny-gpt", "mlp"), default=None, help="built-in model (tiny-gpt)")
    p.add_argument("--seeds", default=None, metavar="A,B,...", help="training seeds (0,1)")
    p.add_argument("--workers", type=int, default=2, help="seeds trained at once, one process each (2)")
    p.add_argument("--ks", default=None, metavar="A,B,...", help="the k grid (else --k-min ... --spacing)")
    p.add_argument("--k-min", type=int, default=None, help="smallest k of the grid (8)")
    p.add_argument("--k-max", type=int, default=None, help="largest k of the grid (256)")
    p.add_argument("--k-count", type=int, default=None, help="number of k (6)")
    p.add_argument("--spacing", choices=("log", "linear"), default=None, help="grid spacing (log)")
    p.add_argument("--sigmas", default=None, metavar="A,B,...", help="probe scales σ (1e-3)")
    p.add_argument("--dims", default=None, metavar="A,B,...", help="subspace dimensions D (1,4)")
    p.add_argument("--estimators", default=None, metavar="A,B,...",
                   help="estimators (delta1,full_mc,direct_mc,gm)")
    p.add_argument("--mc-samples", type=int, default=None, help="Monte Carlo draws S (16)")
    p.add_argument("--batch-size", type=int, default=None, help="training samples per step (8)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (1e-3)")
    p.add_argument("--validation-samples", type=int, default=None, help="held-out samples (128)")
    p.add_argument("--tol", type=float, default=None, help="eigensolver tolerance (1e-3)")
    _common(p)
    p.set_defaults(func=cmd_curriculum)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    print(f"curvprobe: warning: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``curvprobe`` console script and ``python -m curvprobe``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    _apply_threads(args)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileExistsError, ValueError, TypeError, FileNotFoundError,
            FloatingPointError) as exc:
        _traceback_if(args.debug)
        print(f"curvprobe: error{_rank()}: {_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        hint = ("; finished parts are kept: rerun the same command with --resume"
                if args.command in ("probe", "curriculum", "demo") else "")
        print(f"curvprobe: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        _traceback_if(args.debug)
        print(f"curvprobe: internal error{_rank()}: {type(exc).__name__}: {_line(exc)}"
              + ("" if args.debug else " (rerun with --debug for the traceback)"), file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = previous


def _traceback_if(debug: bool) -> None:
    """With ``--debug``, the traceback of the exception being handled (and of its cause,
    such as an error raised inside a user's model factory) on stderr."""
    if debug:
        import traceback

        traceback.print_exc()


def _rank() -> str:
    """`` (rank r of W)`` inside a torchrun launch of several processes, else empty."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world > 1 else ""


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and text.startswith("'"):
        text = text.strip("'")
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
