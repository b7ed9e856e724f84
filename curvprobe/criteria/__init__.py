"""The stabilization measurement: spec → engine → parts → Dataset.

:mod:`~curvprobe.criteria.spec` (the estimator registry and a validated spec,
no torch), :mod:`~curvprobe.criteria.engine` (the arithmetic),
:mod:`~curvprobe.criteria.sweep` (parts, merge, :func:`stabilization`), and
the measurements built on them: :mod:`~curvprobe.criteria.validity`,
:mod:`~curvprobe.criteria.convergence`, :mod:`~curvprobe.criteria.curriculum`;
:mod:`~curvprobe.criteria.probes`, :mod:`~curvprobe.criteria.surrogate` and
:mod:`~curvprobe.criteria.theory` hold the probing laws, the quadratic
surrogate and its closed forms.
"""

from curvprobe.criteria.spec import DEFAULT_ESTIMATORS, ESTIMATORS, Estimator, StabilizationSpec
from curvprobe.criteria.sweep import Part, iter_parts, merge_parts, stabilization

__all__ = ["DEFAULT_ESTIMATORS", "ESTIMATORS", "Estimator", "Part", "StabilizationSpec", "iter_parts",
           "merge_parts", "stabilization"]
