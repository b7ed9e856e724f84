"""Eigensolvers on a symmetric operator: they see only a :class:`~curvprobe.core.operators.LinearOperator`."""

from curvprobe.linalg.eigen import METHODS, Eigenspace, christoffel_kernel, miss_probability, top_eigenspace

__all__ = ["METHODS", "Eigenspace", "christoffel_kernel", "miss_probability", "top_eigenspace"]
