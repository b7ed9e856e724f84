"""Spectral fits of per-layer rank profiles (Calvo; see ``docs/spectral.md``).

Pure numpy/scipy functions on the top-K singular values ``singular_values``
(σ_k) of a layer gradient G = U Σ Vᵀ and the exact directional curvatures ``h``
(h_k) along the rank-one directions u_k v_kᵀ, k = 1..K:

- :func:`alpha_gamma_s`: the spectral-transfer ("alpha triangle") exponents
  α, γ, s, each with R², and the predicted s = αγ;
- :func:`rank_profile`: power-law / exponential / log-normal fits of log σ_k
  with AIC and BIC, and the BIC winner;
- :func:`participation_ratio`, :func:`zeta_bound`, :func:`s_weight`.

Conventions (they reproduce the paper's published numbers to ~1e-13):

- all logarithms are natural;
- every slope is an ordinary least-squares line *with intercept*, and
  R² = 1 − RSS/TSS of that line (equal to the squared Pearson correlation);
- ranks are k = 1..K, with index ``k - 1`` of each array holding rank k;
- s is fitted on the positive h sorted in decreasing order against the ranks
  k = 1..n₊ (n₊ = number of positive h), not against their original k;
- rank-profile fits use all K values: n = K, p = 2, 2, 3;
  RSS is the residual sum of squares in natural-log space of σ.

Too little data (fewer than 3 usable points) yields NaN fields and a ``reason``
string instead of an exception; malformed input (wrong shape, non-finite,
non-positive or unsorted σ, mismatched lengths) raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

MIN_POINTS = 3
"""Fewest points an exponent fit is attempted on (two points always fit exactly)."""

RANK_MODELS = ("power_law", "exponential", "lognormal")
"""Rank-profile models, in tie-breaking order for the BIC winner."""

RANK_MODEL_PARAMS = MappingProxyType(
    {
        "power_law": ("log_c", "gamma"),
        "exponential": ("log_c", "beta"),
        "lognormal": ("log_c", "b", "a"),
    }
)
"""Parameter names of each rank-profile model, as stored by the reference."""

DELTA_BIC_PAIRS = (
    ("exp_minus_pl", "exponential", "power_law"),
    ("ln_minus_pl", "lognormal", "power_law"),
    ("ln_minus_exp", "lognormal", "exponential"),
)
"""(name, model, baseline): ``delta_bic[name] = BIC(model) − BIC(baseline)``."""

_NAN = float("nan")


# --------------------------------------------------------------------------- #
# input checks
# --------------------------------------------------------------------------- #


def _as_finite_1d(values: ArrayLike, name: str) -> np.ndarray:
    """Return ``values`` as a non-empty, finite, 1-D float64 array or raise."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} non-finite value(s), first at index(es) {bad[:5].tolist()}"
        )
    return arr


def _as_rank_profile(values: ArrayLike, name: str) -> np.ndarray:
    """Return a positive, non-increasing 1-D rank profile (index k-1 = rank k) or raise."""
    arr = _as_finite_1d(values, name)
    if np.any(arr <= 0):
        raise ValueError(
            f"{name} must be strictly positive (its logarithm is fitted); "
            f"min is {arr.min()!r} — pass only the nonzero singular values"
        )
    rises = np.flatnonzero(np.diff(arr) > 0)
    if rises.size:
        raise ValueError(
            f"{name} must be sorted in decreasing order (index k-1 holds the k-th "
            f"largest value); it increases after index(es) {rises[:5].tolist()}"
        )
    return arr


# --------------------------------------------------------------------------- #
# least squares
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class LineFit:
    """OLS line ``y ≈ intercept + slope · x`` with its R² = 1 − RSS/TSS.

    Attributes
    ----------
    slope, intercept : float
        The line.
    r2 : float
        1 − RSS/TSS; NaN when y is constant (TSS = 0).
    n : int
        Points fitted.
    """

    slope: float
    intercept: float
    r2: float
    n: int

    def to_dict(self) -> dict:
        """The fields as a plain ``{name: value}`` dict."""
        return asdict(self)


def ols_fit(x: ArrayLike, y: ArrayLike) -> LineFit:
    """Ordinary least-squares line with intercept.

    slope = Σ(x−x̄)(y−ȳ) / Σ(x−x̄)²,  intercept = ȳ − slope·x̄,
    R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)².

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Finite, n ≥ 2, x not constant.

    Returns
    -------
    LineFit

    Raises
    ------
    ValueError
        Wrong shape, non-finite values, mismatched lengths, n < 2 or constant x.
    """
    x = _as_finite_1d(x, "x")
    y = _as_finite_1d(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"a line needs at least 2 points, got {x.size}")
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if sxx == 0.0:
        raise ValueError("all x values are identical; the slope is undefined")
    slope = float(xc @ (y - y.mean())) / sxx
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    rss = float(resid @ resid)
    yc = y - y.mean()
    tss = float(yc @ yc)
    r2 = 1.0 - rss / tss if tss > 0.0 else _NAN
    return LineFit(slope=slope, intercept=intercept, r2=r2, n=int(x.size))


def power_law_fit(x: ArrayLike, y: ArrayLike) -> LineFit:
    """Fit ``y ≈ c · x^slope`` by OLS of log y on log x (natural logs).

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Finite and strictly positive, n ≥ 2, x not constant.

    Returns
    -------
    LineFit
        ``slope`` is the exponent and ``intercept`` = log c.

    Raises
    ------
    ValueError
        As :func:`ols_fit`, and non-positive x or y.
    """
    x = _as_finite_1d(x, "x")
    y = _as_finite_1d(y, "y")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("power_law_fit needs strictly positive x and y (logs are fitted)")
    return ols_fit(np.log(x), np.log(y))


# --------------------------------------------------------------------------- #
# alpha triangle
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class TriangleFit:
    """Spectral-transfer exponents of one layer (field names as in the reference).

    Attributes
    ----------
    alpha, r2_alpha : float
        Slope of log h_k on log σ_k over the n_alpha ranks with h_k > 0, and its R².
    gamma, r2_gamma : float
        Minus the slope of log σ_k on log k, k = 1..n_gamma (= top_k), and its R².
    s_hessian, r2_s_hessian : float
        Minus the slope of log h_(j) on log j, j = 1..n_s, for the positive h
        sorted in decreasing order, and its R².
    predicted_s : float
        alpha · gamma.
    triangle_error, triangle_relative_error : float
        |s_hessian − predicted_s| and that divided by s_hessian.
    top_k, n_gamma, n_alpha, n_s : int
        K and the points available to each fit (n_alpha = n_s = number of positive h).
    reason : str
        Why fields are NaN ("" when none is).
    """

    alpha: float
    r2_alpha: float
    gamma: float
    r2_gamma: float
    s_hessian: float
    r2_s_hessian: float
    predicted_s: float
    triangle_error: float
    triangle_relative_error: float
    top_k: int
    n_gamma: int
    n_alpha: int
    n_s: int
    reason: str = ""

    def to_dict(self) -> dict:
        """The fields as a plain ``{name: value}`` dict."""
        return asdict(self)


def alpha_gamma_s(singular_values: ArrayLike, h: ArrayLike) -> TriangleFit:
    """Alpha triangle of one layer: α, γ, s with R², and the transfer s ≈ αγ.

    With σ_k the top-K gradient singular values and h_k the exact curvature along
    u_k v_kᵀ (natural logs, OLS lines with intercept):

    - α: slope of log h_k on log σ_k over the k with h_k > 0;
    - γ: −slope of log σ_k on log k, k = 1..K;
    - s: −slope of log h_(j) on log j, j = 1..n₊, h_(j) the positive h sorted
      decreasingly (so s does not depend on the order of h);
    - predicted s = αγ, error |s − αγ|, relative error |s − αγ| / s.

    Parameters
    ----------
    singular_values : array_like, shape (K,)
        σ_k: strictly positive, finite, non-increasing (rank order).
    h : array_like, shape (K,)
        Finite, any sign, paired with ``singular_values`` by index.

    Returns
    -------
    TriangleFit
        Fewer than 3 positive h (or K < 3) gives NaN for the affected fields
        and an explanatory ``reason``; nothing is raised for that.

    Raises
    ------
    ValueError
        Wrong shape, empty, non-finite, non-positive or unsorted
        ``singular_values``, or mismatched lengths.
    """
    values = _as_rank_profile(singular_values, "singular_values")
    h = _as_finite_1d(h, "h")
    if h.shape != values.shape:
        raise ValueError(f"singular_values and h must have the same length, got {values.size} "
                         f"and {h.size}")
    top_k = int(values.size)
    ranks = np.arange(1, top_k + 1, dtype=np.float64)
    reasons: list[str] = []
    gamma, r2_gamma = _gamma_fit(values, ranks, reasons)
    n_pos = int((h > 0).sum())
    alpha, r2_alpha, s_hessian, r2_s_hessian = _alpha_s_fits(values, h, ranks, reasons)

    predicted_s = alpha * gamma
    triangle_error = abs(s_hessian - predicted_s)
    if s_hessian == 0.0:
        triangle_relative_error = _NAN
        reasons.append("s_hessian is 0; the relative triangle error is undefined")
    else:
        triangle_relative_error = triangle_error / s_hessian

    return TriangleFit(
        alpha=float(alpha),
        r2_alpha=float(r2_alpha),
        gamma=float(gamma),
        r2_gamma=float(r2_gamma),
        s_hessian=float(s_hessian),
        r2_s_hessian=float(r2_s_hessian),
        predicted_s=float(predicted_s),
        triangle_error=float(triangle_error),
        triangle_relative_error=float(triangle_relative_error),
        top_k=top_k,
        n_gamma=top_k,
        n_alpha=n_pos,
        n_s=n_pos,
        reason="; ".join(reasons),
    )


def _gamma_fit(values: np.ndarray, ranks: np.ndarray, reasons: list[str]) -> tuple[float, float]:
    """γ = −slope of log σ_k on log k and its R² (NaN, and a reason appended to
    ``reasons``, below :data:`MIN_POINTS` singular values)."""
    if values.size >= MIN_POINTS:
        fit = power_law_fit(ranks, values)
        return -fit.slope, fit.r2
    reasons.append(f"gamma needs at least {MIN_POINTS} singular values, got K={values.size}")
    return _NAN, _NAN


def _alpha_s_fits(values: np.ndarray, h: np.ndarray, ranks: np.ndarray,
                  reasons: list[str]) -> tuple[float, float, float, float]:
    """``(α, R²_α, s, R²_s)`` over the ranks with ``h_k > 0``: NaN, and a
    reason appended to ``reasons``, where fewer than :data:`MIN_POINTS` are
    positive (both) or σ is constant over them (α)."""
    positive = h > 0
    n_pos = int(positive.sum())
    if n_pos < MIN_POINTS:
        reasons.append(
            f"fewer than {MIN_POINTS} positive h values ({n_pos} of K={values.size}); "
            "alpha, s_hessian and the triangle are undefined"
        )
        return _NAN, _NAN, _NAN, _NAN
    alpha = r2_alpha = _NAN
    if np.ptp(values[positive]) == 0.0:
        reasons.append("the singular values are constant over the k with h_k > 0; "
                       "alpha is undefined")
    else:
        fit = power_law_fit(values[positive], h[positive])
        alpha, r2_alpha = fit.slope, fit.r2
    h_sorted = np.sort(h[positive])[::-1]
    fit = power_law_fit(ranks[:n_pos], h_sorted)
    return alpha, r2_alpha, -fit.slope, fit.r2


# --------------------------------------------------------------------------- #
# rank-profile model comparison
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ModelFit:
    """Least-squares fit of one rank-profile model to log σ_k.

    Attributes
    ----------
    model : str
        One of :data:`RANK_MODELS`.
    params : Mapping[str, float]
        Named as in :data:`RANK_MODEL_PARAMS`.
    rss : float
        Σ_k (log σ_k − model_k)².
    n, p : int
        Points and parameters.
    aic, bic : float
        n log(RSS/n) + 2p and n log(RSS/n) + p log n (−inf if RSS = 0).
    valid : bool
        False when n ≤ p or the design is rank-deficient (then NaN fields).
    """

    model: str
    params: Mapping[str, float]
    rss: float
    n: int
    p: int
    aic: float
    bic: float
    valid: bool

    def to_dict(self) -> dict:
        """Reference layout: ``{"valid", <params>, "rss", "n", "p", "aic", "bic"}``."""
        return {
            "valid": self.valid,
            **dict(self.params),
            "rss": self.rss,
            "n": self.n,
            "p": self.p,
            "aic": self.aic,
            "bic": self.bic,
        }


@dataclass(frozen=True)
class RankProfile:
    """Rank-profile model comparison of one layer (names as in the reference).

    Attributes
    ----------
    fits : Mapping[str, ModelFit]
        ``{"power_law", "exponential", "lognormal"} → ModelFit``.
    best_model_bic : str
        The valid model with the lowest BIC ("" if none is valid).
    delta_bic : Mapping[str, float]
        ``exp_minus_pl``, ``ln_minus_pl``, ``ln_minus_exp`` (negative means
        the first model is preferred), NaN if either fit is invalid.
    n : int
        K, the points fitted.
    reason : str
        Why models are invalid ("" when none is).
    """

    fits: Mapping[str, ModelFit]
    best_model_bic: str
    delta_bic: Mapping[str, float]
    n: int
    reason: str = ""

    def to_dict(self) -> dict:
        """``{"best_model_bic", "delta_bic", "fits": {model: ModelFit.to_dict()}, "n", "reason"}``."""
        return {
            "best_model_bic": self.best_model_bic,
            "delta_bic": dict(self.delta_bic),
            "fits": {name: fit.to_dict() for name, fit in self.fits.items()},
            "n": self.n,
            "reason": self.reason,
        }


def _rank_design(model: str, k: np.ndarray) -> np.ndarray:
    """Design matrix whose coefficients are ``RANK_MODEL_PARAMS[model]``, shape (K, p)."""
    ones, log_k = np.ones_like(k), np.log(k)
    if model == "power_law":  # log c − γ log k
        return np.column_stack([ones, -log_k])
    if model == "exponential":  # log c − β k
        return np.column_stack([ones, -k])
    if model == "lognormal":  # log c + b log k + a (log k)²
        return np.column_stack([ones, log_k, log_k**2])
    raise ValueError(f"unknown rank-profile model {model!r}; expected one of {RANK_MODELS}")


def _information_criteria(rss: float, n: int, p: int) -> tuple[float, float]:
    """(AIC, BIC) = (n log(RSS/n) + 2p, n log(RSS/n) + p log n); −inf for RSS = 0."""
    fit_term = n * math.log(rss / n) if rss > 0.0 else -math.inf
    return fit_term + 2 * p, fit_term + p * math.log(n)


def _fit_rank_model(model: str, log_values: np.ndarray) -> ModelFit:
    """Least-squares fit of ``model`` to log σ_k, k = 1..K."""
    n = int(log_values.size)
    k = np.arange(1, n + 1, dtype=np.float64)
    design = _rank_design(model, k)
    names = RANK_MODEL_PARAMS[model]
    p = len(names)
    coef, _, rank, _ = np.linalg.lstsq(design, log_values, rcond=None)
    if n <= p or rank < p:
        nan_params = MappingProxyType(dict.fromkeys(names, _NAN))
        return ModelFit(model, nan_params, _NAN, n, p, _NAN, _NAN, valid=False)
    resid = log_values - design @ coef
    rss = float(resid @ resid)
    aic, bic = _information_criteria(rss, n, p)
    params = MappingProxyType({name: float(c) for name, c in zip(names, coef)})
    return ModelFit(model, params, rss, n, p, aic, bic, valid=True)


def rank_profile(singular_values: ArrayLike) -> RankProfile:
    """Compare power-law, exponential and log-normal models of a rank profile.

    Least squares in natural-log space of σ_k, k = 1..K:

    - power_law:   log σ_k ≈ log c − γ log k                   (p = 2)
    - exponential: log σ_k ≈ log c − β k                       (p = 2)
    - lognormal:   log σ_k ≈ log c + b log k + a (log k)²      (p = 3)

    with n = K, AIC = n log(RSS/n) + 2p, BIC = n log(RSS/n) + p log n; the lowest
    BIC wins (ties go to the earlier model in :data:`RANK_MODELS`).

    Parameters
    ----------
    singular_values : array_like, shape (K,)
        σ_k: strictly positive, finite, non-increasing.

    Returns
    -------
    RankProfile
        A model with n ≤ p is returned with ``valid=False`` and NaN fields
        rather than raising.

    Raises
    ------
    ValueError
        Wrong shape, empty, non-finite, non-positive or unsorted input.
    """
    values = _as_rank_profile(singular_values, "singular_values")
    log_values = np.log(values)
    fits = {model: _fit_rank_model(model, log_values) for model in RANK_MODELS}
    valid = [model for model in RANK_MODELS if fits[model].valid]
    best = min(valid, key=lambda model: fits[model].bic) if valid else ""
    delta_bic = {
        name: (fits[model].bic - fits[base].bic) if fits[model].valid and fits[base].valid else _NAN
        for name, model, base in DELTA_BIC_PAIRS
    }
    invalid = [model for model in RANK_MODELS if not fits[model].valid]
    reason = (
        f"too few points (K={values.size}) for model(s) {', '.join(invalid)}" if invalid else ""
    )
    return RankProfile(
        fits=MappingProxyType(fits),
        best_model_bic=best,
        delta_bic=MappingProxyType(delta_bic),
        n=int(values.size),
        reason=reason,
    )


# --------------------------------------------------------------------------- #
# participation, zeta bound, weight decay exponent
# --------------------------------------------------------------------------- #


def participation_ratio(x: ArrayLike) -> float:
    """Participation ratio PR(x) = (Σ_k x_k)² / Σ_k x_k².

    Use x = h for curvature and x = σ² for the gradient. For x ≥ 0, 1 ≤ PR ≤ K.

    Parameters
    ----------
    x : array_like, shape (K,)
        Finite, not all zero.

    Returns
    -------
    float
        PR(x).

    Raises
    ------
    ValueError
        Wrong shape, non-finite values or an all-zero ``x``.
    """
    x = _as_finite_1d(x, "x")
    norm2 = float(x @ x)
    if norm2 == 0.0:
        raise ValueError("participation ratio of an all-zero vector is undefined")
    return float(x.sum()) ** 2 / norm2


def zeta_bound(s: float) -> float:
    """Upper bound ζ(s)² / ζ(2s) on PR of a power law x_k = k^(−s), for s > 1.

    It is the K → ∞ limit of PR(1^(−s), ..., K^(−s)), which increases with K;
    zeta_bound(2) = (π²/6)² / (π⁴/90) = 2.5.

    Raises
    ------
    ValueError
        s not finite or s ≤ 1 (ζ(s) diverges at s = 1).
    """
    s = float(s)
    if not math.isfinite(s) or s <= 1.0:
        raise ValueError(f"zeta_bound needs a finite s > 1, got {s!r}")
    return float(special.zeta(s) ** 2 / special.zeta(2.0 * s))


@dataclass(frozen=True)
class WeightDecayFit:
    """Decay exponent of a weight spectrum: s_weight = −slope of log σ_k on log k.

    Attributes
    ----------
    s_weight, r2_s_weight : float
        The exponent and the R² of its fit.
    n : int
        Singular values fitted.
    reason : str
        Why the fields are NaN ("" when they are not).
    """

    s_weight: float
    r2_s_weight: float
    n: int
    reason: str = ""

    def to_dict(self) -> dict:
        """The fields as a plain ``{name: value}`` dict."""
        return asdict(self)


def s_weight(weight_singular_values: ArrayLike) -> WeightDecayFit:
    """Decay exponent of a layer's weight singular values.

    s_weight = −slope of the OLS line of log σ_k on log k, k = 1..n, with R²
    (natural logs; the same fit as γ, applied to W instead of G).

    Parameters
    ----------
    weight_singular_values : array_like, shape (n,)
        Strictly positive, finite, non-increasing — all of them, or the top
        K, as the caller chooses.

    Returns
    -------
    WeightDecayFit
        NaN with a ``reason`` when n < 3.

    Raises
    ------
    ValueError
        Wrong shape, empty, non-finite, non-positive or unsorted input.
    """
    values = _as_rank_profile(weight_singular_values, "weight_singular_values")
    n = int(values.size)
    if n < MIN_POINTS:
        reason = f"s_weight needs at least {MIN_POINTS} singular values, got {n}"
        return WeightDecayFit(_NAN, _NAN, n, reason)
    fit = power_law_fit(np.arange(1, n + 1, dtype=np.float64), values)
    return WeightDecayFit(s_weight=-fit.slope, r2_s_weight=fit.r2, n=n)
