"""Progress bars for long stages (internal).

The measurement functions do not print; the command line shows progress by
counting what a :class:`Problem` evaluates. :func:`counting` temporarily wraps
the ``per_sample_losses_at`` (perturbed points), ``hvp`` (Hessian-vector
products) and ``local_chunks`` (samples of every pass over the data) methods of
a Problem *instance the caller built* and reports each call (each chunk) to a
callback; the originals are restored on exit. Without a terminal there is no
bar; :class:`DrawLog` then reports finished batches of draws as log lines.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

_SENTINEL = object()


def enabled(quiet: bool = False) -> bool:
    """Bars are shown unless ``quiet`` or stderr is not a terminal."""
    return not quiet and sys.stderr.isatty()


def bar(total: int | None = None, desc: str = "", *, show: bool = True, initial: int = 0,
        unit: str = "it"):
    """A tqdm bar on stderr (disabled when ``show`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, unit=unit, disable=not show,
                file=sys.stderr, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def counting(problem, *, on_points: Callable[[int], None] | None = None,
             on_hvps: Callable[[int], None] | None = None,
             on_samples: Callable[[int], None] | None = None) -> Iterator[None]:
    """Call ``on_points(n)`` for every ``n`` perturbed points evaluated,
    ``on_hvps(m)`` for every ``m`` Hessian-vector products and ``on_samples(c)``
    for every chunk of ``c`` samples a pass over the data (a loss, gradient,
    HVP or perturbed-point evaluation) finished on this rank, inside the block."""
    saved = {}

    def wrap(name: str, count: Callable[[tuple, dict], int], callback) -> None:
        if callback is None:
            return
        saved[name] = problem.__dict__.get(name, _SENTINEL)
        original = getattr(problem, name)

        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            callback(count(args, kwargs))
            return out

        setattr(problem, name, wrapper)

    def points(args, kwargs) -> int:
        W = args[0] if args else kwargs["W"]
        return int(W.shape[0])

    def vectors(args, kwargs) -> int:
        v = args[0] if args else kwargs["v"]
        return 1 if v.dim() == 1 else int(v.shape[1])

    wrap("per_sample_losses_at", points, on_points)
    wrap("hvp", vectors, on_hvps)
    if on_samples is not None:
        saved["local_chunks"] = problem.__dict__.get("local_chunks", _SENTINEL)
        chunks = problem.local_chunks

        def counted(*args, **kwargs):
            for a, b in chunks(*args, **kwargs):
                yield a, b
                on_samples(b - a)

        problem.local_chunks = counted
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _SENTINEL:
                problem.__dict__.pop(name, None)
            else:
                problem.__dict__[name] = value


class DrawLog:
    """A log line each time a batch of Monte Carlo draws is finished at every σ.

    Feed it the perturbed-point counts of :func:`counting` (``on_points``): a
    sweep evaluates draws ``[s0, s1)`` at each of ``num_sigmas`` σ in turn, so
    the batch ending at ``s1`` is done when ``num_sigmas · s1`` points were.

    Parameters
    ----------
    say
        Where the lines go.
    label
        What is being drawn (the line's prefix).
    draws
        Draws per σ.
    batch
        Draws evaluated together (``point_batch``).
    num_sigmas
        σ values each batch is evaluated at.
    """

    def __init__(self, say: Callable[[str], None], label: str, *, draws: int, batch: int,
                 num_sigmas: int) -> None:
        self.say, self.label = say, label
        self.draws, self.batch, self.num_sigmas = draws, max(1, batch), num_sigmas
        self.points, self.next_done = 0, min(self.batch, draws)
        self.start = time.perf_counter()

    def __call__(self, points: int) -> None:
        self.points += points
        while self.next_done and self.points >= self.num_sigmas * self.next_done:
            self.say(f"{self.label}: {self.next_done}/{self.draws} draws at every σ "
                     f"({time.perf_counter() - self.start:.0f} s)")
            self.next_done = 0 if self.next_done >= self.draws else min(self.next_done + self.batch,
                                                                        self.draws)
