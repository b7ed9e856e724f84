"""curvprobe: curvature-aligned probing of neural-network loss landscapes.

Importing curvprobe limits BLAS (OpenBLAS/MKL) to one thread through
threadpoolctl, because BLAS threads fighting torch's intra-op threads roughly
double eigensolver wall time on 2 cores. Set ``CURVPROBE_BLAS_THREADS`` to
another number (or ``0`` to leave BLAS alone) before importing.
"""

from curvprobe._compat import install_moved_module_finder
from curvprobe._threads import configure_threads
from curvprobe._version import __version__

configure_threads()
install_moved_module_finder()

from curvprobe.core.operators import HessianOperator, LinearOperator, MatrixOperator  # noqa: E402
from curvprobe.core.problem import Problem  # noqa: E402
from curvprobe.criteria import ESTIMATORS, stabilization  # noqa: E402
from curvprobe.criteria.curriculum import CurriculumProbe  # noqa: E402
from curvprobe.criteria.probes import Dirac, Isotropic, Sphere, Subspace  # noqa: E402
from curvprobe.criteria.surrogate import Estimate, QuadraticSurrogate  # noqa: E402
from curvprobe.criteria.validity import quadratic_validity  # noqa: E402
from curvprobe.linalg import (  # noqa: E402
    Eigenspace,
    SpectralDensity,
    TraceEstimate,
    spectral_density,
    top_eigenspace,
    trace,
)
from curvprobe.results import load, save  # noqa: E402
from curvprobe.spectral.eigenvalues import layer_eigenvalues  # noqa: E402
from curvprobe.spectral.hessian import hessian_report  # noqa: E402

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
