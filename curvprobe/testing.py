"""Testing utilities: synthetic quadratic problems with exact Hessians, and
hypothesis strategies.

:class:`QuadraticProblem` *is* a :class:`curvprobe.Problem` (a subclass) whose
samples are exact quadratics around the trained point ``w*``:

    ℓ_i(w) = a_i + g_iᵀ (w − w*) + ½ (w − w*)ᵀ H_i (w − w*),   i = 1..n,

so at ``w*`` the per-sample loss, gradient and Hessian are ``a_i``, ``g_i``,
``H_i`` exactly, and every quantity of ``docs/concepts.md`` has a dense ground
truth (``dense_hessian``, ``dense_gradient``) computed without autograd. The model
behind it holds the parameter ``w`` (N,) and the buffers ``a`` (n,),
``G`` (n, N), ``Hs`` (n, N, N) and ``w_star`` (N,); its forward takes sample
indices (a long tensor (b,)) and returns the b per-sample losses; the inputs
are ``arange(n)``, the targets zeros, ``loss_fn(out, t) = out``. Everything is
float64. Memory is O(n N²): for small N.

Hypothesis strategies (all draws are float64 numpy arrays or QuadraticProblems):

- :func:`spectra` — eigenvalue arrays of kinds ``spread``, ``clustered``,
  ``degenerate``, ``negative``, ``bulk``;
- :func:`symmetric_matrices` — ``Q diag(λ) Qᵀ`` for a random orthogonal Q;
- :func:`sigmas` — log-uniform probing scales;
- :func:`quadratic_problems` — random :class:`QuadraticProblem` instances.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st
from numpy.typing import ArrayLike
from torch import Tensor, nn

from curvprobe.core.problem import Problem

__all__ = [
    "SPECTRUM_KINDS",
    "QuadraticProblem",
    "quadratic_problems",
    "sigmas",
    "spectra",
    "symmetric_matrices",
]

SPECTRUM_KINDS = ("spread", "clustered", "degenerate", "negative", "bulk")


class _QuadraticModel(nn.Module):
    """``forward(idx) = a[idx] + G[idx] d + ½ dᵀ Hs[idx] d`` with ``d = w − w*``."""

    # buffers (register_buffer), declared for the type checker
    a: Tensor
    G: Tensor
    Hs: Tensor
    w_star: Tensor

    def __init__(self, a: Tensor, G: Tensor, Hs: Tensor, w_star: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w_star.clone())
        self.register_buffer("a", a)
        self.register_buffer("G", G)
        self.register_buffer("Hs", Hs)
        self.register_buffer("w_star", w_star)

    def forward(self, idx: Tensor) -> Tensor:
        d = self.w - self.w_star
        return self.a[idx] + self.G[idx] @ d + 0.5 * ((self.Hs[idx] @ d) @ d)


def _identity_loss(out: Tensor, targets: Tensor) -> Tensor:
    return out


class QuadraticProblem(Problem):
    """A :class:`~curvprobe.Problem` of per-sample quadratics with exact derivatives.

    The model is built here and kept in eval mode; the problem's trained point
    (``params``) is ``w_star``. All arrays are converted to float64.

    Parameters
    ----------
    a : array_like (n,)
        Losses ``ℓ_i(w*)``.
    G : array_like (n, N)
        Gradients ``g_i(w*)``.
    Hs : array_like (n, N, N)
        Symmetric Hessians ``H_i`` (constant in w).
    w_star : array_like (N,) or None
        The trained point (default zeros): the problem's ``params``.
    batch_size : int
        As for :class:`~curvprobe.Problem`.
    hvp_mode : str
        As for :class:`~curvprobe.Problem`.
    """

    def __init__(self, a: ArrayLike | Tensor, G: ArrayLike | Tensor, Hs: ArrayLike | Tensor,
                 w_star: ArrayLike | Tensor | None = None, *, batch_size: int = 256,
                 hvp_mode: str = "auto") -> None:
        a = torch.as_tensor(a, dtype=torch.float64)
        G = torch.as_tensor(G, dtype=torch.float64)
        Hs = torch.as_tensor(Hs, dtype=torch.float64)
        if a.dim() != 1 or a.numel() < 1:
            raise ValueError(f"a must have shape (n,) with n >= 1, got {tuple(a.shape)}")
        n = a.numel()
        if G.dim() != 2 or G.shape[0] != n or G.shape[1] < 1:
            raise ValueError(f"G must have shape ({n}, N), got {tuple(G.shape)}")
        N = G.shape[1]
        if Hs.shape != (n, N, N):
            raise ValueError(f"Hs must have shape ({n}, {N}, {N}), got {tuple(Hs.shape)}")
        w_star = torch.zeros(N, dtype=torch.float64) if w_star is None else \
            torch.as_tensor(w_star, dtype=torch.float64)
        if w_star.shape != (N,):
            raise ValueError(f"w_star must have shape ({N},), got {tuple(w_star.shape)}")
        for name, t in (("a", a), ("G", G), ("Hs", Hs), ("w_star", w_star)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite")
        if not torch.equal(Hs, Hs.mT):
            asym = float((Hs - Hs.mT).abs().max() / Hs.abs().max())
            if asym > 1e-12:
                raise ValueError(f"Hs must be symmetric, relative asymmetry {asym:.3g}")
            Hs = 0.5 * (Hs + Hs.mT)
        model = _QuadraticModel(a, G, Hs, w_star).eval()
        super().__init__(model, _identity_loss, torch.arange(n), torch.zeros(n, dtype=torch.float64),
                         batch_size=batch_size, dtype=torch.float64, hvp_mode=hvp_mode)
        self._a, self._G, self._Hs, self._w0 = a, G, Hs, w_star

    # ---------------------------------------------------------- constructors
    @classmethod
    def random(cls, n: int, N: int, *, seed: int, spectrum: ArrayLike | None = None,
               noise: float = 0.5, stationary: bool = False,
               **kwargs) -> QuadraticProblem:
        """i.i.d. random per-sample quadratics.

        ``H_i = H̄ + noise · max|λ| · W_i`` with the population Hessian
        ``H̄ = Q diag(spectrum) Qᵀ`` (Q random orthogonal; default spectrum
        ``λ_j = 1/j``) and ``W_i`` i.i.d. GOE matrices scaled to spectral norm
        ≈ 1; ``g_i ~ N(0, I_N / N)`` (‖g_i‖ ≈ 1); ``a_i = 1 + ½ ξ_i``,
        ``ξ_i ~ N(0, 1)``; ``w* = 0``. ``stationary=True`` centres the
        gradients, ``g_i ← g_i − (1/n) Σ_j g_j``, so ``Σ_i g_i(w*) = 0``: w* is
        then a stationary point of the empirical loss over all n samples (its
        minimiser when ``H̄ ⪰ 0``), exactly as if the quadratics were expanded
        around it. Extra keywords go to the constructor.
        """
        if n < 1 or N < 1:
            raise ValueError(f"need n >= 1 and N >= 1, got n={n}, N={N}")
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
        rng = np.random.default_rng(seed)
        lam = 1.0 / np.arange(1, N + 1) if spectrum is None else np.asarray(spectrum, dtype=np.float64)
        if lam.shape != (N,) or not np.isfinite(lam).all():
            raise ValueError(f"spectrum must be {N} finite eigenvalues, got shape {lam.shape}")
        Q = _orthogonal(N, rng)
        H_bar = (Q * lam) @ Q.T
        E = rng.standard_normal((n, N, N))
        W = (E + E.transpose(0, 2, 1)) / (2 * math.sqrt(2 * N))
        scale = float(np.abs(lam).max()) if lam.size else 0.0
        Hs = H_bar + noise * scale * W
        Hs = 0.5 * (Hs + Hs.transpose(0, 2, 1))
        G = rng.standard_normal((n, N)) / math.sqrt(N)
        if stationary:
            G = G - G.mean(axis=0)
        a = 1.0 + 0.5 * rng.standard_normal(n)
        return cls(a, G, Hs, None, **kwargs)

    @classmethod
    def least_squares(cls, X: ArrayLike | Tensor, y: ArrayLike | Tensor,
                      w_star: ArrayLike | Tensor | None = None, **kwargs) -> QuadraticProblem:
        """Linear least squares ``ℓ_i(w) = ½ (x_iᵀ w − y_i)²``, exactly.

        With residuals ``r_i = x_iᵀ w* − y_i``: ``a_i = ½ r_i²``,
        ``g_i = r_i x_i``, ``H_i = x_i x_iᵀ``. ``w_star=None`` takes the
        least-squares solution over all n samples (``Σ_i g_i = Xᵀr = 0`` up to
        round-off: stationary for every ordering of the samples).

        Parameters
        ----------
        X : array_like (n, N)
            Inputs ``x_i`` as rows.
        y : array_like (n,)
            Targets ``y_i``.
        w_star : array_like (N,) or None
            Expansion point; None takes the least-squares solution.
        **kwargs
            Go to the constructor.
        """
        X = torch.as_tensor(X, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64)
        if X.dim() != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (n, N) and y (n,), got {tuple(X.shape)} and {tuple(y.shape)}")
        if w_star is None:
            w_star = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
        w_star = torch.as_tensor(w_star, dtype=torch.float64)
        r = X @ w_star - y
        return cls(0.5 * r * r, r[:, None] * X, X[:, :, None] * X[:, None, :], w_star, **kwargs)

    # -------------------------------------------------------------- accessors
    @property
    def a(self) -> Tensor:
        """Per-sample losses at w*, ``a_i = ℓ_i(w*)``: (n,) float64 (a copy)."""
        return self._a.clone()

    @property
    def per_sample_gradients(self) -> Tensor:
        """``g_i(w*)``: (n, N) float64 (a copy)."""
        return self._G.clone()

    @property
    def per_sample_hessians(self) -> Tensor:
        """``H_i``: (n, N, N) float64 (a copy)."""
        return self._Hs.clone()

    @property
    def w_star(self) -> Tensor:
        """The expansion (trained) point w* (N,) float64 (a copy)."""
        return self._w0.clone()

    def dense_losses(self, w: Tensor | None = None) -> Tensor:
        """``ℓ_i(w)`` for all i by the formula: (n,) float64."""
        d = self.point(w) - self._w0
        return self._a + self._G @ d + 0.5 * torch.einsum("nij,i,j->n", self._Hs, d, d)

    def dense_hessian(self, k: int | None = None, start: int = 0) -> Tensor:
        """Hessian of the mean loss over samples ``[start, k)`` (default all),
        ``(1/(k − start)) Σ_i H_i``: (N, N) float64, the same at every w."""
        start, stop = self.sample_range(k, start)
        return self._Hs[start:stop].sum(0) / (stop - start)

    def dense_gradient(self, k: int | None = None, start: int = 0, *,
                       w: Tensor | None = None) -> Tensor:
        """Gradient of the mean loss over ``[start, k)`` at ``w`` (default w*):
        ``(1/(k − start)) Σ_i (g_i + H_i (w − w*))``, (N,) float64."""
        start, stop = self.sample_range(k, start)
        d = self.point(w) - self._w0
        G = self._G[start:stop] + self._Hs[start:stop] @ d
        return G.sum(0) / (stop - start)

    def __repr__(self) -> str:
        return f"QuadraticProblem(N={self.num_params}, n={self.num_samples})"


def _orthogonal(N: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-random orthogonal matrix (QR with the sign fix)."""
    Q, R = np.linalg.qr(rng.standard_normal((N, N)))
    return Q * np.sign(np.where(np.diag(R) == 0, 1.0, np.diag(R)))


# ---------------------------------------------------------------- strategies
def _spectrum(kind: str, n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "spread":  # log-uniform magnitudes over 4 decades, distinct
        lam = scale * 10.0 ** rng.uniform(-4, 0, n)
    elif kind == "clustered":  # a few tight clusters (relative width 1e-6)
        centres = scale * rng.uniform(0.1, 1.0, max(1, min(3, n)))
        lam = centres[rng.integers(0, centres.size, n)] * (1 + 1e-6 * rng.standard_normal(n))
    elif kind == "degenerate":  # exactly repeated values
        values = scale * rng.uniform(-0.5, 1.0, max(1, n // 2))
        lam = np.r_[values, values[rng.integers(0, values.size, n - values.size)]]
    elif kind == "negative":  # largest magnitudes negative: algebraic ≠ magnitude order
        m = max(1, n // 3)
        lam = np.r_[-scale * rng.uniform(0.5, 1.0, m), scale * rng.uniform(-0.1, 0.05, n - m)]
    elif kind == "bulk":  # dense bulk of close eigenvalues, optional outliers above
        outliers = int(rng.integers(0, min(2, n - 1) + 1)) if n > 1 else 0
        lam = np.r_[scale * rng.uniform(1.5, 3.0, outliers),
                    scale * rng.uniform(0.9, 1.0, n - outliers)]
    else:
        raise ValueError(f"unknown spectrum kind {kind!r}; valid: {', '.join(SPECTRUM_KINDS)}")
    return np.sort(lam.astype(np.float64))[::-1].copy()


@st.composite
def spectra(draw, min_size: int = 1, max_size: int = 12,
            kinds: tuple[str, ...] = SPECTRUM_KINDS) -> np.ndarray:
    """Eigenvalue arrays: float64 numpy (n,), ``min_size ≤ n ≤ max_size``,
    sorted decreasing (algebraically largest first).

    Kinds (drawn from ``kinds``): ``spread`` (positive, log-uniform over four
    decades), ``clustered`` (up to three clusters of relative width 1e-6),
    ``degenerate`` (exactly repeated values, mixed sign), ``negative`` (the
    largest magnitudes are negative), ``bulk`` (a dense bulk in
    ``[0.9, 1]·scale`` with up to two outliers above — the case where
    residual-only Lanczos skips an eigenvalue). The overall scale is
    log-uniform in ``[1e-2, 1e2]``.
    """
    bad = set(kinds) - set(SPECTRUM_KINDS)
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty subset of {SPECTRUM_KINDS}, got {kinds!r}")
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    kind = draw(st.sampled_from(kinds))
    n = draw(st.integers(min_size, max_size))
    scale = 10.0 ** draw(st.floats(-2, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    return _spectrum(kind, n, scale, np.random.default_rng(seed))


@st.composite
def symmetric_matrices(draw, spectrum_strategy: st.SearchStrategy | None = None, *,
                       return_spectrum: bool = False):
    """Symmetric matrices ``A = Q diag(λ) Qᵀ``: float64 numpy (n, n), exactly
    symmetric, with ``λ`` from ``spectrum_strategy`` (default :func:`spectra`)
    and Q Haar-random orthogonal. ``return_spectrum=True`` draws ``(A, λ)``
    (λ as drawn, sorted decreasing; the eigenvalues of A up to round-off)."""
    lam = np.asarray(draw(spectrum_strategy if spectrum_strategy is not None else spectra()),
                     dtype=np.float64)
    Q = _orthogonal(lam.size, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    return (A, lam) if return_spectrum else A


def sigmas(min_value: float = 1e-3, max_value: float = 1.0) -> st.SearchStrategy[float]:
    """Probing scales σ, log-uniform in ``[min_value, max_value]`` (param)."""
    if not (0 < min_value <= max_value and math.isfinite(max_value)):
        raise ValueError(f"need 0 < min_value <= max_value < inf, got {min_value}, {max_value}")
    lo, hi = math.log10(min_value), math.log10(max_value)
    return st.floats(lo, hi).map(lambda x: min(max(10.0**x, min_value), max_value))


@st.composite
def quadratic_problems(draw, min_samples: int = 2, max_samples: int = 12, min_dim: int = 1,
                       max_dim: int = 6,
                       stationary: bool | st.SearchStrategy[bool] = st.booleans(),
                       kinds: tuple[str, ...] = SPECTRUM_KINDS) -> QuadraticProblem:
    """Random :class:`QuadraticProblem` instances (:meth:`QuadraticProblem.random`).

    n samples in ``[min_samples, max_samples]``, dimension N in
    ``[min_dim, max_dim]``, population spectrum from :func:`spectra` (size N,
    ``kinds``), noise in ``[0, 1]``; ``stationary`` is a bool or a strategy of
    bools. Batch size is drawn too, so chunked sums are exercised.
    """
    if not 1 <= min_samples <= max_samples or not 1 <= min_dim <= max_dim:
        raise ValueError("need 1 <= min_samples <= max_samples and 1 <= min_dim <= max_dim")
    n = draw(st.integers(min_samples, max_samples))
    N = draw(st.integers(min_dim, max_dim))
    lam = draw(spectra(N, N, kinds))
    stat = draw(stationary) if isinstance(stationary, st.SearchStrategy) else bool(stationary)
    noise = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    batch_size = draw(st.integers(1, n))
    return QuadraticProblem.random(n, N, seed=seed, spectrum=lam, noise=noise, stationary=stat,
                                   batch_size=batch_size)
