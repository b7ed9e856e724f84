"""curvprobe: curvature-aligned probing of neural-network loss landscapes.

Importing curvprobe limits BLAS (OpenBLAS/MKL) to one thread through
threadpoolctl, because BLAS threads fighting torch's intra-op threads roughly
double eigensolver wall time on 2 cores. Set ``CURVPROBE_BLAS_THREADS`` to
another number (or ``0`` to leave BLAS alone) before importing.

The public names (:data:`__all__`) are imported on first use (PEP 562), so
``import curvprobe`` and ``curvprobe --help`` do not load torch; the thread
limit above is applied at import, before torch or numpy are loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from curvprobe._compat import install_moved_module_finder
from curvprobe._threads import configure_threads
from curvprobe._version import __version__

configure_threads()
install_moved_module_finder()

if TYPE_CHECKING:
    from curvprobe.core.operators import HessianOperator, LinearOperator, MatrixOperator
    from curvprobe.core.problem import Problem
    from curvprobe.criteria import ESTIMATORS, stabilization
    from curvprobe.criteria.curriculum import CurriculumProbe
    from curvprobe.criteria.probes import Dirac, Isotropic, Sphere, Subspace
    from curvprobe.criteria.surrogate import Estimate, QuadraticSurrogate
    from curvprobe.criteria.validity import quadratic_validity
    from curvprobe.linalg import (
        Eigenspace,
        SpectralDensity,
        TraceEstimate,
        spectral_density,
        top_eigenspace,
        trace,
    )
    from curvprobe.results import load, save
    from curvprobe.spectral.eigenvalues import layer_eigenvalues
    from curvprobe.spectral.hessian import hessian_report

_HOMES = {
    "ESTIMATORS": "curvprobe.criteria.spec",
    "CurriculumProbe": "curvprobe.criteria.curriculum",
    "Dirac": "curvprobe.criteria.probes",
    "Eigenspace": "curvprobe.linalg",
    "Estimate": "curvprobe.criteria.surrogate",
    "HessianOperator": "curvprobe.core.operators",
    "Isotropic": "curvprobe.criteria.probes",
    "LinearOperator": "curvprobe.core.operators",
    "MatrixOperator": "curvprobe.core.operators",
    "Problem": "curvprobe.core.problem",
    "QuadraticSurrogate": "curvprobe.criteria.surrogate",
    "SpectralDensity": "curvprobe.linalg",
    "Sphere": "curvprobe.criteria.probes",
    "Subspace": "curvprobe.criteria.probes",
    "TraceEstimate": "curvprobe.linalg",
    "hessian_report": "curvprobe.spectral.hessian",
    "layer_eigenvalues": "curvprobe.spectral.eigenvalues",
    "load": "curvprobe.results",
    "quadratic_validity": "curvprobe.criteria.validity",
    "save": "curvprobe.results",
    "spectral_density": "curvprobe.linalg",
    "stabilization": "curvprobe.criteria.sweep",
    "top_eigenspace": "curvprobe.linalg",
    "trace": "curvprobe.linalg",
}
"""Public name → the module that defines it (imported on first access)."""

_SUBPACKAGES = ("app", "core", "criteria", "linalg", "optim", "results", "spectral", "zoo")
"""Subpackages reachable as attributes after a plain ``import curvprobe`` (as when they were
imported eagerly)."""

__all__ = [
    "ESTIMATORS",
    "CurriculumProbe",
    "Dirac",
    "Eigenspace",
    "Estimate",
    "HessianOperator",
    "Isotropic",
    "LinearOperator",
    "MatrixOperator",
    "Problem",
    "QuadraticSurrogate",
    "SpectralDensity",
    "Sphere",
    "Subspace",
    "TraceEstimate",
    "__version__",
    "hessian_report",
    "layer_eigenvalues",
    "load",
    "quadratic_validity",
    "save",
    "spectral_density",
    "stabilization",
    "top_eigenspace",
    "trace",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"curvprobe.{name}")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'curvprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
