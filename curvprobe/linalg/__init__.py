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
  reference baseline;
* :mod:`~curvprobe.linalg.memory` — :func:`eigensolver_memory`, the memory
  model of a solve (float64 or float32 basis);
* :mod:`~curvprobe.linalg.trace` — :func:`trace`, Hutch++ and Hutchinson;
* :mod:`~curvprobe.linalg.density` — :func:`spectral_density`, stochastic
  Lanczos quadrature.
"""

from curvprobe.linalg._krylov import BASIS_DTYPES, WHICH, KrylovRun, explicit_pairs, ritz_order
from curvprobe.linalg.davidson import block_davidson
from curvprobe.linalg.density import SpectralDensity, spectral_density
from curvprobe.linalg.eigensolver import BLOCK_SIZE, METHODS, top_eigenspace
from curvprobe.linalg.guard import (
    GuardResult,
    christoffel_kernel,
    deflation_shift,
    guard_levels,
    guard_miss_probability,
    guard_stop_rule,
    miss_probability,
    missed_eigenvalue_guard,
)
from curvprobe.linalg.lanczos import thick_restart_lanczos
from curvprobe.linalg.memory import eigensolver_memory
from curvprobe.linalg.power import deflated_power_iteration
from curvprobe.linalg.result import Eigenspace, NotConverged, ToleranceBelowPrecision
from curvprobe.linalg.trace import TRACE_METHODS, TraceEstimate, trace

__all__ = [
    "BASIS_DTYPES",
    "BLOCK_SIZE",
    "METHODS",
    "TRACE_METHODS",
    "WHICH",
    "Eigenspace",
    "GuardResult",
    "KrylovRun",
    "NotConverged",
    "SpectralDensity",
    "ToleranceBelowPrecision",
    "TraceEstimate",
    "block_davidson",
    "christoffel_kernel",
    "deflated_power_iteration",
    "deflation_shift",
    "eigensolver_memory",
    "explicit_pairs",
    "guard_levels",
    "guard_miss_probability",
    "guard_stop_rule",
    "miss_probability",
    "missed_eigenvalue_guard",
    "ritz_order",
    "spectral_density",
    "thick_restart_lanczos",
    "top_eigenspace",
    "trace",
]
