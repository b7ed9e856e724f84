"""Progress bars for long stages (internal).

The measurement functions do not print; the command line shows progress by
counting what a :class:`Problem` evaluates. :func:`counting` temporarily wraps
the ``per_sample_losses_at`` (perturbed points) and ``hvp`` (Hessian-vector
products) methods of a Problem *instance the caller built* and reports each
call to a callback; the originals are restored on exit.
"""

from __future__ import annotations

import contextlib
import sys
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
             on_hvps: Callable[[int], None] | None = None) -> Iterator[None]:
    """Call ``on_points(n)`` for every ``n`` perturbed points evaluated and
    ``on_hvps(m)`` for every ``m`` Hessian-vector products, inside the block."""
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
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _SENTINEL:
                problem.__dict__.pop(name, None)
            else:
                problem.__dict__[name] = value
