"""``--threads auto`` (the default): torch's intra-op thread count from the machine's load.

Why
---
torch's OpenMP threads wait for each other at the end of every parallel
region. When another process holds one of the cores, the region waits for
the preempted thread's next time slice, so on a busy 2-core machine
two threads ran each k of ``make demo`` in 51–520 s against 22 s with one
thread (issue #15). On a free machine two threads are faster.

Rule
----
``usable`` CPUs are those in the process's affinity mask
(``os.sched_getaffinity``), capped by the cgroup CPU quota rounded up
(``cpu.max`` of cgroup v2 or ``cpu.cfs_quota_us / cpu.cfs_period_us`` of
v1 under ``/sys/fs/cgroup``) and divided among the local ranks of a
torchrun launch (``LOCAL_WORLD_SIZE``). ``others`` is the number of those
CPUs busy with other work: the larger of

* the busy share of the usable CPUs in ``/proc/stat`` over
  :data:`SAMPLE_SECONDS`, less this process's own CPU time in that window
  (an instant reading), and
* the 1-minute load average less the threads this process ran since the
  last check (a lagging reading, which keeps a load that pauses for a
  moment in view).

:func:`choose_threads` then takes ``floor(usable - others + TOLERANCE)``
clamped to ``[1, usable]``: a thread per free CPU, and one thread as soon
as another process holds most of a CPU. Taking the larger of the two
readings errs towards fewer threads, whose worst case (a free CPU left
idle, at most ``usable``× slower) is far smaller than oversubscription's
(10–20×). When the rule gives more than one thread, a short probe
(:func:`probe_seconds`: a chain of small matrix products, a few
milliseconds at one and at ``n`` threads, interleaved) keeps ``n`` only if
it is measured faster, so a machine or a build where threads do not help
stays at one.

The CLI decides once at start and again between the stages of a run
(:meth:`AutoThreads.between_stages`, the stage hook the demo calls between
its stages, :func:`curvprobe.app.runs.run_probe` between parts and
:func:`curvprobe.spectral.hessian.hessian_report` between its parts); a check costs about
:data:`SAMPLE_SECONDS` plus the probe. The thread count can change
between stages, which changes floating-point summation order; pass an
explicit ``--threads`` for bitwise-reproducible runs. ``benchmarks/threads.py``
measures the demo with ``auto`` against explicit counts on a loaded machine
(see docs/performance.md).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AutoThreads", "Decision", "choose_threads", "decide", "parse_threads", "start_auto",
           "usable_cpus"]

#: Seconds over which ``/proc/stat`` is sampled for the CPUs busy with other work.
SAMPLE_SECONDS = 0.1
#: Fraction of a CPU that may be busy with other work and still count as free.
TOLERANCE = 0.3
CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_threads(text: str) -> int | str:
    """``--threads`` value: ``"auto"`` or an integer ≥ 1 (``ValueError`` otherwise, one line)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--threads must be 'auto' or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"--threads must be >= 1, got {value}")
    return value


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` → 2.0; ``"max ..."`` → None)."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = float(fields[1]) if len(fields) > 1 else 100000.0
    return float(fields[0]) / period


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup CPU quota in CPUs (v2 ``cpu.max``, else v1 ``cpu.cfs_*``), or None if unlimited."""
    try:
        return parse_cpu_max((root / "cpu.max").read_text())
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def affinity() -> set[int]:
    """The CPU ids this process may run on (all of ``os.cpu_count()`` where unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def usable_cpus(allowed: int, quota: float | None, local_ranks: int = 1) -> int:
    """CPUs one process may keep busy: ``min(allowed, ceil(quota)) // local_ranks``, at least 1.

    Parameters
    ----------
    allowed : int
        CPUs in the affinity mask.
    quota : float or None
        cgroup CPU quota in CPUs (None: unlimited).
    local_ranks : int
        Processes of this launch sharing the machine.
    """
    cpus = allowed if quota is None else min(allowed, math.ceil(quota - 1e-9))
    return max(1, cpus // max(1, local_ranks))


def choose_threads(usable: int, others: float, tolerance: float = TOLERANCE) -> int:
    """Threads for ``usable`` CPUs when ``others`` of them are busy with other work.

    ``floor(usable - others + tolerance)`` clamped to ``[1, usable]``
    (see the module docstring).
    """
    free = math.floor(usable - max(0.0, others) + tolerance)
    return int(min(usable, max(1, free)))


def _cpu_ticks(cpus: set[int], stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """Busy and total jiffies summed over ``cpus`` (None where ``/proc/stat`` is unreadable)."""
    busy = total = 0.0
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *values = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [float(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total > 0 else None


def busy_others(cpus: set[int], seconds: float = SAMPLE_SECONDS) -> float | None:
    """CPUs among ``cpus`` busy with other processes over the next ``seconds`` (None if unknown).

    The busy share of ``/proc/stat`` times ``len(cpus)``, less this process's
    own CPU seconds in the window per wall second.
    """
    first, own0, wall0 = _cpu_ticks(cpus), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    second, own1, wall1 = _cpu_ticks(cpus), time.process_time(), time.perf_counter()
    if first is None or second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return max(0.0, share * len(cpus) - (own1 - own0) / max(wall1 - wall0, 1e-9))


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def probe_seconds(threads: int, repeats: int = 4) -> tuple[float, float]:
    """Mean seconds of a small workload at one thread and at ``threads`` (interleaved).

    The workload is 12 products of a (128, 256) by a (256, 256) float32
    matrix with a tanh after each — about a millisecond per run at one
    thread, in parallel regions of the size of a small model's HVP. The
    mean (not the minimum) keeps the long stalls of an oversubscribed run
    in the comparison. torch's thread count is restored.
    """
    import torch

    before = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 256, generator=generator)
    w = torch.randn(256, 256, generator=generator) / 16
    totals = {1: 0.0, threads: 0.0}
    try:
        for round_ in range(repeats + 1):
            if round_ == 1:
                totals = dict.fromkeys(totals, 0.0)  # the first round warms up
            for n in totals:
                torch.set_num_threads(n)
                t0, y = time.perf_counter(), x
                for _ in range(12):
                    y = torch.tanh(y @ w)
                totals[n] += time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return totals[1] / repeats, totals[threads] / repeats


@dataclass(frozen=True)
class Decision:
    """What ``--threads auto`` picked and the readings it picked it from."""

    threads: int
    rule: int  # choose_threads's count before the probe
    usable: int
    allowed: int
    quota: float | None
    others: float
    load: float | None
    probe: tuple[float, float] | None  # mean seconds at 1 and at the rule's count

    def describe(self) -> str:
        """One line: the count and why."""
        limits = f"{self.usable} usable CPUs ({self.allowed} in the affinity mask"
        limits += ", no cgroup quota)" if self.quota is None else f", cgroup quota {self.quota:g})"
        load = "" if self.load is None else f", 1-min load {self.load:.2f}"
        why = f"; {limits}, other work on ≈ {self.others:.2f} CPUs{load}"
        if self.probe is not None:
            one, many = self.probe
            why += f"; probe {one * 1e3:.2f} ms at 1 thread vs {many * 1e3:.2f} ms at {self.rule}"
        return f"threads: auto → {self.threads}{why}"


def decide(own_threads: int = 0, *, probe: bool = True, sample: float = SAMPLE_SECONDS,
           cgroup: Path = CGROUP_ROOT) -> Decision:
    """The ``auto`` thread count now (see the module docstring).

    ``own_threads`` is what this process ran with since the last check (0 at
    start), subtracted from the load average.
    """
    cpus = affinity()
    quota = cpu_quota(cgroup)
    usable = usable_cpus(len(cpus), quota, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    load = load_average()
    lagging = 0.0 if load is None else load - own_threads
    instant = busy_others(cpus, sample) if sample > 0 else None
    others = max(lagging, instant or 0.0)
    n = choose_threads(usable, others)
    measured = probe_seconds(n) if probe and n > 1 else None
    chosen = 1 if measured is not None and measured[1] >= measured[0] else n
    return Decision(chosen, n, usable, len(cpus), quota, max(0.0, others), load, measured)


class AutoThreads:
    """``--threads auto`` in a running command: the current :class:`Decision`,
    applied with ``torch.set_num_threads``, and where to report a change.

    :meth:`between_stages` is the hook the demo,
    :func:`curvprobe.app.runs.run_probe` and
    :func:`curvprobe.spectral.hessian.hessian_report` call between their stages.
    """

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.say: Callable[[str], None] = lambda message: None

    def announce(self, say: Callable[[str], None]) -> None:
        """Send the current decision line to ``say``, and later lines to it
        whenever the count changes."""
        self.say = say
        say(self.decision.describe())

    def between_stages(self) -> int:
        """Re-decide and apply; returns torch's thread count."""
        import torch

        decision = decide(own_threads=self.decision.threads)
        if decision.threads != self.decision.threads:
            torch.set_num_threads(decision.threads)
            self.say(decision.describe())
        self.decision = decision
        return torch.get_num_threads()


def start_auto() -> AutoThreads:
    """Decide and apply with ``torch.set_num_threads``; the returned
    :class:`AutoThreads` re-decides at each of its ``between_stages``."""
    import torch

    decision = decide()
    torch.set_num_threads(decision.threads)
    return AutoThreads(decision)
