"""``--threads auto`` against explicit thread counts on a machine loaded by a parallel job.

One run starts the parallel job — a pure-Python spin loop per usable CPU,
as separate processes — waits ``--settle`` seconds, then times
``curvprobe demo --quick`` with the default threads (``auto``) and with
each ``--threads N`` of ``--explicit``, interleaved over ``--rounds``
rounds (the order rotates by one each round), and prints a markdown table
(paste it as it is): the wall time of every run, the thread counts
``auto`` chose (from its log lines), the 1-minute load average before
each run, and the ratio of ``auto``'s best
time to the best explicit time (target ≤ 1.5). Other processes on a shared
machine add their own, changing load: the best of several rounds compares
the thread choices rather than that noise.

A run slower than ``--cap`` times the fastest finished run so far is
stopped and reported as "> cap" (it cannot be the best); with the whole
script under ``nice``, the load and the demo share the same priority.
Ctrl-C (or SIGTERM) prints the table of the runs finished so far.

    nice -n 10 python benchmarks/threads.py [--rounds 2] [--explicit 1 2] [--cap 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "while True: pass"


def start_load(n: int) -> list[subprocess.Popen]:
    """``n`` spinning processes (the parallel job)."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def run_demo(threads: str, out: Path, timeout: float | None) -> tuple[float | None, list[str]]:
    """Wall seconds of ``curvprobe demo --quick`` (None if stopped at ``timeout``) and its
    ``threads:`` log lines."""
    cmd = [sys.executable, "-m", "curvprobe", "demo", "--quick", "--out", str(out)]
    if threads != "auto":
        cmd += ["--threads", threads]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, []
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, [line for line in done.stderr.splitlines() if line.startswith("threads:")]


def picks(lines: list[str]) -> str:
    """The thread counts of the ``threads: auto → n; ...`` lines, in order ("3→1" style)."""
    return "→".join(line.split("→", 1)[1].split(";", 1)[0].strip() for line in lines) or "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--explicit", nargs="+", default=["1", "2"], help="explicit --threads values")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds between load and first run")
    parser.add_argument("--cap", type=float, default=3.0, help="stop a run at this × the fastest so far")
    parser.add_argument("--out", type=Path, default=None, help="directory for the demo outputs")
    args = parser.parse_args()
    from curvprobe.app.threads import affinity, cpu_quota, usable_cpus

    usable = usable_cpus(len(affinity()), cpu_quota())
    root = args.out or Path(tempfile.mkdtemp(prefix="curvprobe-threads-"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load = start_load(usable)
    rows: list[tuple[int, str, float | None, float, str]] = []
    try:
        time.sleep(args.settle)
        for r in range(args.rounds):
            order = ["auto", *args.explicit]
            for threads in order[r % len(order):] + order[:r % len(order)]:
                done = [row[2] for row in rows if row[2] is not None]
                timeout = args.cap * min(done) if done else None
                before = os.getloadavg()[0]
                seconds, lines = run_demo(threads, root / f"{threads}_{r}", timeout)
                rows.append((r, threads, seconds, before, picks(lines)))
                print(f"round {r} threads {threads}: {seconds} s, load {before:.2f}, auto {picks(lines)}",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the table of the runs finished so far
        print(f"interrupted after {len(rows)} runs", file=sys.stderr)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    print(table(rows, usable, timeout_cap=args.cap))


def table(rows: list[tuple[int, str, float | None, float, str]], usable: int, timeout_cap: float) -> str:
    """The markdown table of the runs and the auto / best-explicit ratio."""
    import torch

    lines = [(f"### `curvprobe demo --quick` under a parallel job ({usable} spinning processes on "
              f"{usable} usable CPUs; torch {torch.__version__}, {os.cpu_count()} logical cores)"), "",
             "| round | --threads | wall (s) | 1-min load before | auto's picks |", "|---|---|---|---|---|"]
    for r, threads, seconds, before, chosen in rows:
        wall = f"> cap ({timeout_cap:g}× fastest)" if seconds is None else f"{seconds:.1f}"
        lines.append(f"| {r} | {threads} | {wall} | {before:.2f} | {chosen} |")
    auto = [s for _, t, s, _, _ in rows if t == "auto" and s is not None]
    explicit = [s for _, t, s, _, _ in rows if t != "auto" and s is not None]
    if auto and explicit:
        ratio = min(auto) / min(explicit)
        lines += ["", (f"auto / best explicit = {min(auto):.1f} s / {min(explicit):.1f} s = **{ratio:.2f}** "
                       f"(target ≤ 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
