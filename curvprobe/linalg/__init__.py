"""Eigensolvers on a symmetric operator: they see only a :class:`~curvprobe.core.operators.LinearOperator`.

One concept per module:

* :mod:`~curvprobe.linalg.eigensolver` — :func:`top_eigenspace`, the certified
  top-D solve that composes the others;
* :mod:`~curvprobe.linalg.result` — :class:`Eigenspace`, its result;
* :mod:`~curvprobe.linalg.lanczos` — :func:`thick_restart_lanczos`;
* :mod:`~curvprobe.linalg.davidson` — :func:`block_davidson`, the warm start;
* :mod:`~curvprobe.linalg.guard` — :func:`missed_eigenvalue_guard`,
  :func:`christoffel_kernel`, :func:`miss_probability`;
* :mod:`~curvprobe.linalg.power` — :func:`deflated_power_iteration`, the
  reference baseline.
"""

from curvprobe.linalg._krylov import KrylovRun
from curvprobe.linalg.davidson import block_davidson
from curvprobe.linalg.eigensolver import METHODS, top_eigenspace
from curvprobe.linalg.guard import (
    GuardResult,
    christoffel_kernel,
    guard_stop_rule,
    miss_probability,
    missed_eigenvalue_guard,
)
from curvprobe.linalg.lanczos import thick_restart_lanczos
from curvprobe.linalg.power import deflated_power_iteration
from curvprobe.linalg.result import Eigenspace

__all__ = [
    "METHODS",
    "Eigenspace",
    "GuardResult",
    "KrylovRun",
    "block_davidson",
    "christoffel_kernel",
    "deflated_power_iteration",
    "guard_stop_rule",
    "miss_probability",
    "missed_eigenvalue_guard",
    "thick_restart_lanczos",
    "top_eigenspace",
]
