"""Stabilization criteria: the measurement layer."""

from curvprobe.criteria.sweep import ESTIMATORS, stabilization

__all__ = ["ESTIMATORS", "stabilization"]
