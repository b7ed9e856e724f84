"""Start-up time of ``curvprobe --help`` against importing torch (issue #15).

``--help`` used to import torch (9–13 s on a busy machine); the package now
imports its public names on first use. One run times, interleaved over
``--rounds`` rounds, fresh interpreters running

* ``python -m curvprobe --help``,
* ``python -m curvprobe probe --help``,
* ``python -c "import torch"`` (the cost ``--help`` no longer pays),
* ``python -c "pass"`` (the interpreter itself),

and prints a markdown table (paste it as it is): the best and median wall
time of each and the ratio of each ``--help`` to ``import torch`` (best
times; target well below 1).

    nice python benchmarks/cli_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "curvprobe --help": [sys.executable, "-m", "curvprobe", "--help"],
    "curvprobe probe --help": [sys.executable, "-m", "curvprobe", "probe", "--help"],
    "import torch": [sys.executable, "-c", "import torch"],
    "python -c pass": [sys.executable, "-c", "pass"],
}


def _seconds(command: list[str]) -> float:
    """Wall time of one fresh process running ``command`` (its output discarded)."""
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each round
            times[name].append(_seconds(COMMANDS[name]))
    torch_best = min(times["import torch"])
    print(f"| command | best (s) | median (s) | best / import torch best |  ({args.rounds} rounds)")
    print("|---|---|---|---|")
    for name in names:
        best = min(times[name])
        print(f"| {name} | {best:.3f} | {statistics.median(times[name]):.3f} | {best / torch_best:.3f} |")


if __name__ == "__main__":
    main()
