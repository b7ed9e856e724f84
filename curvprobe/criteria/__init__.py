"""The stabilization measurement: spec → engine → parts → Dataset.

:mod:`~curvprobe.criteria.spec` (the estimator registry and a validated spec,
no torch), :mod:`~curvprobe.criteria.engine` (the arithmetic),
:mod:`~curvprobe.criteria.sweep` (parts, merge, :func:`stabilization`), and
the measurements built on them: :mod:`~curvprobe.criteria.validity`,
:mod:`~curvprobe.criteria.convergence`, :mod:`~curvprobe.criteria.curriculum`;
:mod:`~curvprobe.criteria.probes`, :mod:`~curvprobe.criteria.surrogate` and
:mod:`~curvprobe.criteria.theory` hold the probing laws, the quadratic
surrogate and its closed forms.

The names of :mod:`~curvprobe.criteria.sweep` are imported on first access
(PEP 562), so importing :mod:`~curvprobe.criteria.spec` (the command line's
parser does) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from curvprobe.criteria.spec import DEFAULT_ESTIMATORS, ESTIMATORS, Estimator, StabilizationSpec

if TYPE_CHECKING:
    from curvprobe.criteria.sweep import Part, iter_parts, merge_parts, stabilization

__all__ = ["DEFAULT_ESTIMATORS", "ESTIMATORS", "Estimator", "Part", "StabilizationSpec", "iter_parts",
           "merge_parts", "stabilization"]

_LAZY = frozenset({"Part", "iter_parts", "merge_parts", "stabilization"})


def __getattr__(name: str) -> Any:
    """Import :mod:`~curvprobe.criteria.sweep` on first access to one of its names."""
    if name not in _LAZY:
        raise AttributeError(f"module 'curvprobe.criteria' has no attribute {name!r}")
    value = getattr(importlib.import_module("curvprobe.criteria.sweep"), name)
    globals()[name] = value
    return value
