"""Per-layer spectral exponents measured during training, for the optimizers.

:class:`SpectralProbe` is what ``SpectralNewton(alpha="measured")`` and
:class:`~curvprobe.optim.scalar.ScalarSpectral` call every ``every`` steps: it
builds a :class:`~curvprobe.core.problem.Problem` from the model at its current
parameters (``make_problem(model)``, as
:class:`~curvprobe.criteria.curriculum.CurriculumProbe` does) and runs
:func:`~curvprobe.spectral.layers.layer_spectra` on the requested layers. For a
layer with gradient ``G = U diag(σ) Vᵀ`` over the probe's samples and exact
curvatures ``h_j = vec(u_j v_jᵀ)ᵀ H vec(u_j v_jᵀ)`` of the top ``K`` directions:

    α = slope of log h_j on log σ_j (h_j > 0),
    s = −slope of log h_(j) on log j   (positive h sorted decreasingly)

(``docs/spectral.md``). A layer with fewer than three positive ``h_j`` gets NaN
and its reason; the optimizers then keep their previous value or a fallback.

Cost of one measurement: one gradient over the probe's samples, then per layer
one float64 SVD of its gradient and ``K`` exact HVP vectors restricted to the
layer's block (``method="block"``), i.e. roughly ``1 + c·K·L`` gradient
evaluations for ``L`` layers with ``c ≈ 2–4`` (an HVP costs a few gradients).
Layers whose rank ``min(m, n)`` is below ``top_k`` are measured with
``K = min(m, n)``; each distinct ``K`` is one :func:`layer_spectra` call, and
each call computes the probe's gradient once. ``seconds`` and ``count`` record
what was spent.

The model is never modified: the Problem copies the parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from curvprobe.core.problem import Problem
from curvprobe.spectral.layers import layer_spectra, select_layers

__all__ = ["LayerExponents", "SpectralProbe"]


@dataclass(frozen=True)
class LayerExponents:
    """The exponents of one layer from one measurement.

    Attributes
    ----------
    alpha, r2_alpha : float
        α (``h ∝ σ^α``) and the R² of its fit; NaN when undefined.
    gamma : float
        Gradient rank decay ``σ_j ∝ j^{−γ}``.
    s_hessian : float
        Curvature rank decay ``h_(j) ∝ j^{−s}``.
    top_k : int
        K used for this layer.
    reason : str
        Why a field is NaN ("" when none is).
    """

    alpha: float
    r2_alpha: float
    gamma: float
    s_hessian: float
    top_k: int
    reason: str = ""


class SpectralProbe:
    """Measures α, γ and s of named layers of ``model`` on a fixed set of samples.

    Parameters
    ----------
    model : nn.Module
        The model being trained; its parameters are matched to the
        optimizer's by identity.
    make_problem : callable
        ``make_problem(model) -> Problem`` on the probe samples (e.g. a fixed
        batch of training data). Called at every measurement, so the Problem
        sees the current parameters. The Problem's rules apply: a model with
        dropout or batch-norm in training mode is refused (put it in eval mode
        around the optimizer step, or probe a deterministic model), and a
        bfloat16 model is best probed with ``dtype=torch.float32``.
    every : int
        Optimizer steps between measurements (the first is at step 0).
    top_k : int
        K, singular directions per layer (capped at each layer's rank).
    k : int, optional
        Use the problem's first ``k`` samples (default all).

    Attributes
    ----------
    seconds : float
        Wall time spent measuring, in s.
    count : int
        Measurements made.
    history : list of dict
        One ``{parameter name: LayerExponents}`` per measurement.
    """

    def __init__(self, model: nn.Module, make_problem: Callable[[nn.Module], Problem], *,
                 every: int = 100, top_k: int = 16, k: int | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.model = model
        self.make_problem = make_problem
        self.every = every
        self.top_k = top_k
        self.k = k
        self.seconds = 0.0
        self.count = 0
        self.history: list[dict[str, LayerExponents]] = []

    def names(self, params: Iterable[Tensor]) -> list[str]:
        """The model's names of ``params`` (matched by identity), in the given order.

        Raises
        ------
        ValueError
            A parameter that is not one of the model's trainable parameters.
        """
        by_id = {id(p): name for name, p in self.model.named_parameters() if p.requires_grad}
        out = []
        for p in params:
            if id(p) not in by_id:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not a trainable parameter "
                                 "of the probe's model; the probe can only measure that model's layers")
            out.append(by_id[id(p)])
        return out

    def measure(self, names: Sequence[str]) -> dict[str, LayerExponents]:
        """α, γ and s of every measurable layer among ``names`` at the model's current parameters.

        Names that :func:`~curvprobe.spectral.layers.select_layers` does not
        accept as layers (a 3-D parameter other than a Conv1d kernel, say) are
        left out of the result; so are names not given. Appends the result to
        :attr:`history` and its wall time to :attr:`seconds`.
        """
        start = time.perf_counter()
        problem = self.make_problem(self.model)
        wanted = set(names)
        layers = [layer for layer in select_layers(problem, "*") if layer.name in wanted]
        by_k: dict[int, list[str]] = {}
        for layer in layers:
            by_k.setdefault(min(self.top_k, layer.max_rank), []).append(layer.name)
        out: dict[str, LayerExponents] = {}
        for K, group in by_k.items():
            spectra = layer_spectra(problem, layers=group, top_k=K, k=self.k)
            for i, name in enumerate(spectra["layer"].values.tolist()):
                row = spectra.isel(layer=i)
                out[name] = LayerExponents(
                    alpha=float(row["alpha"]), r2_alpha=float(row["r2_alpha"]),
                    gamma=float(row["gamma"]), s_hessian=float(row["s_hessian"]), top_k=K,
                    reason=str(row["fit_reason"].values))
        self.seconds += time.perf_counter() - start
        self.count += 1
        self.history.append(out)
        return out
