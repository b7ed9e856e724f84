"""Spectral Newton: step along the gradient's singular directions by T(σ; α) (``docs/optimizer.md``).

For every parameter with two or more dimensions (a matrix ``W``, convolution
kernels as ``c_out × (c_in·kh·kw)``), with ``g`` its gradient and ``μ`` the
momentum::

    B ← μ B + (1 − μ) g                       (momentum buffer, ≥ float32)
    M = g + μ (B − g)  if nesterov  else  B
    W ← W (1 − lr λ) − lr · Δ(M; α, δ)

with ``Δ`` the RMS-normalised spectral step of
:func:`~curvprobe.optim.functional.spectral_update`:
``Δ ∝ U diag(σ̂ / (σ̂^α + δ)) Vᵀ`` for ``M = U diag(σ) Vᵀ``, ``σ̂ = σ/σ_1``,
``rms(Δ) = 0.2``. Every other parameter (biases, norm scales — anything with
fewer than two dimensions — and every parameter of a group with
``spectral=False``) takes an AdamW step with the same ``lr`` and ``λ``
(:func:`~curvprobe.optim.functional.adamw_update`). Because the spectral step's
RMS matches AdamW's, one learning rate serves both.

α per parameter group: a number (2 for convolutions, ≈ 1 for attention in the
paper's measurements; 1 with δ = 0 is Muon's direction with an exact SVD, 0 is
normalised momentum SGD), or ``"measured"``: each layer's own α from a
:class:`~curvprobe.optim.probe.SpectralProbe`, refreshed every ``probe.every``
steps, clipped to ``alpha_bounds`` and replaced by the previous value (at first
``alpha_fallback``) where the fit is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from curvprobe.optim.functional import adamw_update, spectral_update, state_dtype
from curvprobe.optim.probe import SpectralProbe

__all__ = ["SpectralNewton", "load_state", "param_groups"]

MEASURED = "measured"


def param_groups(model: nn.Module, **spectral_options: Any) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as two groups: matrices and the rest.

    Group 0 holds every trainable parameter with ≥ 2 dimensions except
    ``nn.Embedding`` weights, with ``spectral_options`` (e.g. ``alpha=1.0``);
    group 1 (``spectral=False``) holds embeddings and all parameters with
    fewer than two dimensions, which take AdamW steps. Embeddings go to AdamW
    because an embedding gradient is a sum of one-hot rows, ``Σ_t e_{x_t} δ_tᵀ``:
    its singular directions mix unrelated tokens by their frequency in the
    batch, and flattening that spectrum moves rare tokens as far as frequent
    ones (the reason Muon's authors keep embeddings on AdamW). An empty group
    is left out.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in trainable if p.dim() >= 2 and id(p) not in embeddings]
    rest = [p for p in trainable if p.dim() < 2 or id(p) in embeddings]
    groups = [{"params": matrices, **spectral_options}, {"params": rest, "spectral": False}]
    return [g for g in groups if g["params"]]


def _check_group(group: dict[str, Any]) -> None:
    """Raise ValueError on an invalid hyper-parameter of ``group``."""
    alpha = group["alpha"]
    if alpha != MEASURED and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                                  and alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0 or {MEASURED!r}, got {alpha!r}")
    lo, hi = group["alpha_bounds"]
    if not 0 <= lo <= hi:
        raise ValueError(f"alpha_bounds must satisfy 0 <= low <= high, got {group['alpha_bounds']}")
    checks = {
        "lr": group["lr"] >= 0,
        "damping": group["damping"] >= 0,
        "momentum": 0 <= group["momentum"] < 1,
        "weight_decay": group["weight_decay"] >= 0,
        "betas": all(0 <= b < 1 for b in group["betas"]),
        "eps": group["eps"] >= 0,
        "alpha_fallback": group["alpha_fallback"] >= 0,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"invalid {', '.join(f'{n}={group[n]!r}' for n in bad)} (lr, damping, "
                         "weight_decay, eps and alpha_fallback >= 0; momentum and betas in [0, 1))")


class SpectralNewton(Optimizer):
    """Spectral Newton with AdamW for non-matrix parameters (module docstring for the update).

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or parameter groups (:func:`param_groups` builds the usual
        split). Each option below may be set per group.
    lr : float
        Learning rate, in param units per step: the RMS of a matrix step is
        ``0.2 · lr`` (as an AdamW step's), so AdamW's learning rates are the
        right range.
    alpha : float or "measured"
        α ≥ 0 of ``T(σ̂; α, δ) = σ̂ / (σ̂^α + δ)``, or "measured" (needs ``probe``).
    damping : float
        δ ≥ 0 in units of σ_1^α: directions with ``σ̂ ≲ δ^{1/α}`` are damped
        towards gradient descent instead of amplified. 0 gives the undamped
        transfer (zero singular values still get 0).
    momentum : float
        μ in [0, 1), the momentum of the matrices' buffer (the spectral step
        takes the SVD of the momentum, not of the raw gradient).
    nesterov : bool
        Use ``g + μ(B − g)`` instead of ``B``.
    weight_decay : float
        Decoupled weight decay λ: ``W ← W (1 − lr λ)`` each step, every parameter.
    betas, eps : tuple of float, float
        AdamW's moment decays and denominator term (non-matrix parameters).
    spectral : bool
        False makes every parameter of the group take AdamW steps.
    alpha_bounds : tuple of float
        Measured α are clipped to ``[low, high]``.
    alpha_fallback : float
        α of a measured layer before its first defined fit.
    probe : SpectralProbe, optional
        Required when a group has ``alpha="measured"``; all of that group's
        matrices must be parameters of ``probe.model``.

    Notes
    -----
    State per matrix: ``momentum_buffer``, ``step``, and for measured α
    ``alpha`` (the value in use), ``alpha_raw`` (the last fit, NaN if
    undefined) and ``alpha_age`` (steps since the measurement); per other
    parameter: ``exp_avg``, ``exp_avg_sq`` and ``step``. State tensors are
    float32 for float32, bfloat16 and float16 parameters (float64 for float64
    ones: :func:`~curvprobe.optim.functional.state_dtype`), also after
    :meth:`load_state_dict`. The probe is not part of the state: give the new
    optimizer the same probe.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3, *,
                 alpha: float | str = 2.0, damping: float = 1e-2, momentum: float = 0.95,
                 nesterov: bool = True, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, spectral: bool = True,
                 alpha_bounds: tuple[float, float] = (0.0, 2.0), alpha_fallback: float = 1.0,
                 probe: SpectralProbe | None = None) -> None:
        self.probe = probe
        defaults = dict(lr=lr, alpha=alpha, damping=damping, momentum=momentum, nesterov=nesterov,
                        weight_decay=weight_decay, betas=tuple(betas), eps=eps, spectral=spectral,
                        alpha_bounds=tuple(alpha_bounds), alpha_fallback=alpha_fallback)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's rules), then check its options and, for
        ``alpha="measured"``, that the probe can measure its matrices."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group)
        if group["alpha"] == MEASURED and group["spectral"]:
            if self.probe is None:
                raise ValueError("alpha='measured' needs probe=SpectralProbe(model, make_problem)")
            self.probe.names(p for p in group["params"] if p.dim() >= 2)

    def _measured(self) -> list[tuple[Tensor, dict[str, Any]]]:
        return [(p, g) for g in self.param_groups if g["spectral"] and g["alpha"] == MEASURED
                for p in g["params"] if p.dim() >= 2]

    def _refresh_alpha(self) -> None:
        """Measure α of every measured matrix when any is due (no α yet, or
        ``alpha_age ≥ probe.every``)."""
        measured = self._measured()
        if not measured or self.probe is None:
            return
        states = [self.state[p] for p, _ in measured]
        if all("alpha" in s and s["alpha_age"] < self.probe.every for s in states):
            return
        names = self.probe.names(p for p, _ in measured)
        with torch.enable_grad():
            fits = self.probe.measure(names)
        for (_, group), state, name in zip(measured, states, names):
            raw = fits[name].alpha if name in fits else math.nan
            lo, hi = group["alpha_bounds"]
            value = raw if math.isfinite(raw) else state.get("alpha", group["alpha_fallback"])
            state.update(alpha=min(max(value, lo), hi), alpha_raw=raw, alpha_age=0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of every parameter with a gradient; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refresh_alpha()
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("SpectralNewton does not support sparse gradients")
                if group["spectral"] and p.dim() >= 2:
                    self._matrix_step(p, grad, group)
                else:
                    self._adamw_step(p, grad, group)
        for p, _ in self._measured():
            self.state[p]["alpha_age"] = self.state[p].get("alpha_age", 0) + 1
        return loss

    def _matrix_step(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(p, dtype=state_dtype(p.dtype))
        state["step"] += 1
        dtype = state_dtype(p.dtype)
        g = grad.to(dtype)
        buf = state["momentum_buffer"]
        mu = group["momentum"]
        buf.lerp_(g, 1.0 - mu)
        M = g.lerp(buf, mu) if group["nesterov"] else buf
        alpha = state["alpha"] if group["alpha"] == MEASURED else float(group["alpha"])
        update = spectral_update(M, alpha, group["damping"])
        w = p.to(dtype)
        w.mul_(1.0 - group["lr"] * group["weight_decay"]).add_(update, alpha=-group["lr"])
        if w is not p:
            p.copy_(w)

    def _adamw_step(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype(p.dtype))
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype(p.dtype))
        state["step"] += 1
        adamw_update(p, grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=group["lr"],
                     betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, then every floating state tensor restored to
        :func:`~curvprobe.optim.functional.state_dtype` (see :func:`load_state`)."""
        load_state(self, state_dict)


def load_state(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    """``Optimizer.load_state_dict(optimizer, state_dict)`` keeping state tensors in their state dtype.

    torch casts floating state to the parameter's dtype on load, which would
    round a bfloat16 parameter's float32 moments; here they are copied from
    ``state_dict`` as saved, in ``state_dtype(param.dtype)`` on the
    parameter's device.
    """
    Optimizer.load_state_dict(optimizer, state_dict)
    saved = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    for index, p in zip(saved, params):
        for key, value in state_dict["state"].get(index, {}).items():
            if isinstance(value, Tensor) and value.is_floating_point():
                optimizer.state[p][key] = value.to(device=p.device, dtype=state_dtype(p.dtype), copy=True)
