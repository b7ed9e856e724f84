"""ScalarSpectral: AdamW with one measured learning-rate factor per layer (the negative control).

The spectral paper's control experiment: instead of shaping the step along the
gradient's singular directions (:class:`~curvprobe.optim.spectral_newton.SpectralNewton`),
keep AdamW and give each layer ℓ one scalar learning rate from its measured
spectrum,

    η_ℓ = lr · clip((s_ℓ / s̄)^β, scale_bounds),

with ``s_ℓ`` the layer's curvature rank-decay exponent (``h_(j) ∝ j^{−s}``,
:func:`~curvprobe.spectral.fits.alpha_gamma_s`) from a
:class:`~curvprobe.optim.probe.SpectralProbe`, and ``s̄`` the mean of the
defined ``s_ℓ`` of the same measurement. A layer whose ``s`` is undefined keeps
its previous factor (at first 1); parameters with fewer than two dimensions
always use factor 1. Factors are refreshed every ``probe.every`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from curvprobe.optim.functional import adamw_update, state_dtype
from curvprobe.optim.probe import LayerExponents, SpectralProbe
from curvprobe.optim.spectral_newton import load_state

__all__ = ["ScalarSpectral", "scalar_factors"]


def scalar_factors(fits: dict[str, LayerExponents], beta: float,
                   bounds: tuple[float, float]) -> dict[str, float]:
    """``clip((s_ℓ / s̄)^β, bounds)`` for every layer with a finite, positive ``s_ℓ``.

    ``s̄`` is the arithmetic mean of those ``s_ℓ``; layers without one are
    left out (the caller keeps their previous factor).
    """
    defined = {name: f.s_hessian for name, f in fits.items()
               if math.isfinite(f.s_hessian) and f.s_hessian > 0}
    if not defined:
        return {}
    mean = sum(defined.values()) / len(defined)
    lo, hi = bounds
    return {name: min(max((s / mean) ** beta, lo), hi) for name, s in defined.items()}


class ScalarSpectral(Optimizer):
    """AdamW whose learning rate of layer ℓ is ``lr · (s_ℓ / s̄)^β`` (module docstring).

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or groups; every parameter with ≥ 2 dimensions must belong
        to ``probe.model``.
    probe : SpectralProbe
        Measures ``s_ℓ`` every ``probe.every`` steps.
    lr : float
        Base learning rate.
    beta : float
        Exponent β of the factor (0 gives plain AdamW).
    scale_bounds : tuple of float
        Factors are clipped to ``[low, high]``, ``0 < low ≤ high``.
    betas, eps, weight_decay :
        AdamW's (:func:`~curvprobe.optim.functional.adamw_update`); the weight
        decay is decoupled and uses the layer's ``η_ℓ``.

    Notes
    -----
    State per parameter: ``exp_avg``, ``exp_avg_sq`` (float32, float64 for
    float64 parameters), ``step``; per
    matrix also ``lr_scale`` (the factor in use), ``s_hessian`` (the last
    fit, NaN if undefined) and ``scale_age``.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], probe: SpectralProbe,
                 lr: float = 1e-3, *, beta: float = 1.0, scale_bounds: tuple[float, float] = (0.1, 10.0),
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        if not 0 < scale_bounds[0] <= scale_bounds[1]:
            raise ValueError(f"scale_bounds must satisfy 0 < low <= high, got {scale_bounds}")
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"need lr, eps, weight_decay >= 0 and betas in [0, 1); got lr={lr}, "
                             f"eps={eps}, weight_decay={weight_decay}, betas={betas}")
        self.probe = probe
        self.beta = float(beta)
        self.scale_bounds = (float(scale_bounds[0]), float(scale_bounds[1]))
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.probe.names(self._matrices())

    def _matrices(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.dim() >= 2]

    def _refresh_scales(self) -> None:
        """Re-measure when any matrix has no factor yet or ``scale_age ≥ probe.every``."""
        matrices = self._matrices()
        states = [self.state[p] for p in matrices]
        if all("lr_scale" in s and s["scale_age"] < self.probe.every for s in states):
            return
        names = self.probe.names(matrices)
        with torch.enable_grad():
            fits = self.probe.measure(names)
        factors = scalar_factors(fits, self.beta, self.scale_bounds)
        for state, name in zip(states, names):
            state.update(lr_scale=factors.get(name, state.get("lr_scale", 1.0)),
                         s_hessian=fits[name].s_hessian if name in fits else math.nan, scale_age=0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamW step with per-layer factors; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refresh_scales()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype(p.dtype))
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype(p.dtype))
                state["step"] += 1
                adamw_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                             lr=group["lr"], betas=group["betas"], eps=group["eps"],
                             weight_decay=group["weight_decay"], lr_scale=state.get("lr_scale", 1.0))
        for p in self._matrices():
            self.state[p]["scale_age"] = self.state[p].get("scale_age", 0) + 1
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader with state tensors kept in their state dtype
        (:func:`~curvprobe.optim.spectral_newton.load_state`)."""
        load_state(self, state_dict)
