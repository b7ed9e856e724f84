"""The run times the documentation quotes, measured in one run.

Times, one after the other on this machine:

1. training the built-in transformer into an empty cache (what the first
   ``curvprobe demo`` of a fresh install pays once);
2. ``curvprobe demo --quick`` with the model cached;
3. ``curvprobe demo`` (the full demo) with the model cached;
4. every notebook in ``notebooks/``, executed top to bottom with nbclient in
   a fresh kernel of this interpreter, the model cached.

Each command runs as a user runs it (a subprocess, default ``--threads
auto``); the load average before each step is printed with its time, and
the table is what README.md, docs/index.md and the notebooks page quote.

    python benchmarks/docs_times.py [--skip-full]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``cmd``; raises on a non-zero exit."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def train_cached(env: dict[str, str]) -> float:
    """Wall seconds to train and cache the built-in transformer."""
    code = ("from curvprobe.zoo.builtin import builtin_problem; "
            "builtin_problem('tiny-gpt', num_samples=8, progress=False)")
    return timed([sys.executable, "-c", code], env)


def notebook_seconds(path: Path, env: dict[str, str]) -> float:
    """Wall seconds to execute the notebook at ``path`` in a fresh kernel."""
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as jupyter:
        write_kernel_spec(str(Path(jupyter) / "kernels" / "curvprobe"), overrides={})
        os.environ.update(env, JUPYTER_PATH=jupyter)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=900, kernel_name="curvprobe",
                                resources={"metadata": {"path": str(path.parent)}})
        t0 = time.perf_counter()
        client.execute()
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="leave out the full demo")
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CURVPROBE_CACHE": str(Path(tmp) / "cache")}
        demo = [sys.executable, "-m", "curvprobe", "demo", "--quiet"]
        steps = [("train and cache the built-in transformer (once per install)", lambda: train_cached(env)),
                 ("`curvprobe demo --quick` (model cached)", lambda: timed([*demo, "--quick", "--out",
                                                                           f"{tmp}/quick"], env))]
        if not args.skip_full:
            full = [*demo, "--out", f"{tmp}/full"]
            steps.append(("`curvprobe demo` (model cached)", lambda: timed(full, env)))
        steps += [(f"notebook `{path.name}` (model cached)", lambda path=path: notebook_seconds(path, env))
                  for path in sorted((ROOT / "notebooks").glob("*.ipynb"))]
        for label, step in steps:
            before = load()
            rows.append((label, step(), before))
            print(f"[{label}: {rows[-1][1]:.0f} s]", file=sys.stderr, flush=True)
    print(f"### Run times ({len(os.sched_getaffinity(0))} usable CPUs)\n")
    print("| step | wall | 1-min load before |\n|---|---|---|")
    for label, seconds, before in rows:
        print(f"| {label} | {seconds // 60:.0f} min {seconds % 60:.0f} s | {before:.2f} |")


if __name__ == "__main__":
    main()
