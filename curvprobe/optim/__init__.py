"""Optimizers from the spectral core: Spectral Newton and its scalar control (see ``docs/optimizer.md``).

* :mod:`~curvprobe.optim.functional` — the transfer function ``T(σ̂; α, δ)``,
  the spectral step of one matrix and the AdamW step, as pure functions;
* :mod:`~curvprobe.optim.spectral_newton` — :class:`SpectralNewton` and
  :func:`param_groups`;
* :mod:`~curvprobe.optim.scalar` — :class:`ScalarSpectral`, AdamW with one
  measured learning-rate factor per layer;
* :mod:`~curvprobe.optim.probe` — :class:`SpectralProbe`, per-layer α, γ, s
  measured during training.
"""

from curvprobe.optim.functional import (
    ADAMW_RMS,
    adamw_update,
    matrix_view,
    spectral_direction,
    spectral_update,
    transfer,
)
from curvprobe.optim.probe import LayerExponents, SpectralProbe
from curvprobe.optim.scalar import ScalarSpectral, scalar_factors
from curvprobe.optim.spectral_newton import SpectralNewton, param_groups

__all__ = [
    "ADAMW_RMS",
    "LayerExponents",
    "ScalarSpectral",
    "SpectralNewton",
    "SpectralProbe",
    "adamw_update",
    "matrix_view",
    "param_groups",
    "scalar_factors",
    "spectral_direction",
    "spectral_update",
    "transfer",
]
