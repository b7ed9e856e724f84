"""``curvprobe hessian`` on the built-in transformer, run as a user runs it (issue #18's target).

Runs ``python -m curvprobe hessian --model builtin:tiny-gpt --out DIR`` in a
subprocess at the command's defaults (plus any ``--flags`` given after
``--``) and prints Markdown tables:

1. the run: wall time of the whole command (model load, every part, the
   files), the children's CPU time, the load average at the start and its
   mean and maximum sampled every 5 s while the command ran, and whether the
   wall time is within ``--budget`` seconds;
2. per part of the report, from ``hessian.nc``'s attrs: operator products
   (HVPs), wall and CPU seconds and CPU seconds per product (CPU time, all
   threads of the command: what the load distorts least);
3. the certificates: pairs not converged per part (0 everywhere: every
   eigenpair converged), each end's miss probability (no miss bound is
   stated, so nothing is called certified) and the trace with its standard
   error.

With ``--compare`` the settings of the previous defaults (256 samples, 4
eigenvalues per layer, 60 trace products, 10 × 80 SLQ products) run in the
same invocation, right after, and a last table gives the ratios of wall time
and products (both runs see the load of the same half hour; the product
ratio does not depend on it).

    python benchmarks/hessian_report.py [--model builtin:tiny-gpt] [--budget 300] [--compare]
                                        [--keep DIR] [-- extra curvprobe hessian flags]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from curvprobe.app.report import table
from curvprobe.results import load

#: the settings the command used before issue #18's speed-up
PREVIOUS = ["--num-data", "256", "--layer-top", "4", "--trace-matvecs", "60", "--density-probes", "10",
            "--density-steps", "80"]


class LoadSampler:
    """The 1-minute load average every ``period`` seconds while a ``with`` block runs."""

    def __init__(self, period: float = 5.0) -> None:
        self.period, self.samples = period, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_command(model: str, flags: list[str], out: Path) -> dict:
    """One ``curvprobe hessian`` subprocess: wall and CPU seconds, load samples, its Dataset."""
    command = [sys.executable, "-m", "curvprobe", "hessian", "--model", model, "--out", str(out),
               "--quiet", "--overwrite", *flags]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with LoadSampler() as sampler:
        t0 = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"command": " ".join(command[1:]), "wall": wall, "cpu": cpu, "load": sampler.samples,
            "ds": load(out / "hessian.nc")}


def run_table(runs: dict[str, dict], budget: float) -> str:
    rows = []
    for name, run in runs.items():
        loads = run["load"]
        rows.append([name, f"{run['wall']:.1f}", f"{run['cpu']:.1f}", f"{loads[0]:.2f}",
                     f"{statistics.fmean(loads):.2f}", f"{max(loads):.2f}",
                     "yes" if run["wall"] <= budget else "no"])
    return table(["settings", "wall s", "CPU s", "load at start", "mean load", "max load",
                  f"≤ {budget:g} s"], rows)


def parts_table(ds) -> str:
    seconds, cpu, products = ds.attrs["seconds"], ds.attrs["cpu_seconds"], ds.attrs["products"]
    order = [p for p in ("top", "bottom", "trace", "density", "layers") if p in seconds]
    rows = [[p, products[p], f"{seconds[p]:.1f}", f"{cpu[p]:.1f}", f"{cpu[p] / max(products[p], 1):.3f}"]
            for p in order]
    rows.append(["total", sum(products[p] for p in order), f"{sum(seconds[p] for p in order):.1f}",
                 f"{sum(cpu[p] for p in order):.1f}", ""])
    return table(["part", "products (HVPs)", "wall s", "CPU s", "CPU s / product"], rows)


def certificate_table(ds) -> str:
    attrs = ds.attrs
    missed = attrs["not_converged"]
    rows = [["top", f"{ds.sizes['rank'] - missed['top']}/{ds.sizes['rank']}", f"{attrs['tol']:g}",
             f"{attrs['top_miss_probability']:.2g}"],
            ["bottom", f"{ds.sizes['bottom_rank'] - missed['bottom']}/{ds.sizes['bottom_rank']}",
             f"{attrs['bottom_tol']:g} of s = {attrs['bottom_scale']:.4g}",
             f"{attrs['bottom_miss_probability']:.2g}"]]
    if "layers" in missed:
        pairs = int(ds["layer_eigenvalue"].notnull().sum())
        rows.append(["layers", f"{pairs - missed['layers']}/{pairs}", f"{attrs['layer_tol']:g}",
                     f"≤ {float(ds['layer_miss_probability'].max()):.2g}"])
    trace = f"tr H = {float(ds['trace']):.5g} ± {float(ds['trace_stderr']):.2g}"
    return table(["part", "converged pairs", "tolerance", "miss probability"], rows) + f"\n\n{trace}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:tiny-gpt")
    parser.add_argument("--budget", type=float, default=300.0, help="target wall seconds")
    parser.add_argument("--compare", action="store_true", help="also run the previous default settings")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs' outputs here")
    parser.add_argument("extra", nargs="*", help="further curvprobe hessian flags (after --)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="hessian-bench-"))
    settings = {"defaults": args.extra}
    if args.compare:
        settings["previous defaults"] = [*PREVIOUS, *args.extra]
    runs = {name: run_command(args.model, flags, base / name.replace(" ", "_"))
            for name, flags in settings.items()}
    print(f"# curvprobe hessian --model {args.model} ({os.cpu_count()} CPUs, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')})\n")
    print(run_table(runs, args.budget), "\n")
    for name, run in runs.items():
        print(f"## {name}: `{run['command']}`\n")
        print(parts_table(run["ds"]), "\n")
        print(certificate_table(run["ds"]), "\n")
    if args.compare:
        new, old = runs["defaults"], runs["previous defaults"]
        work = [sum(r["ds"].attrs["products"].values()) * r["ds"].attrs["k"] for r in (old, new)]
        print(table(["ratio previous / defaults", "value"],
                    [["wall time", f"{old['wall'] / new['wall']:.2f}"],
                     ["products × samples", f"{work[0] / work[1]:.2f}"]]))


if __name__ == "__main__":
    main()
