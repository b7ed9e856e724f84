"""Tests of curvprobe.spectral.fits (docs/spectral.md).

1. The paper's published per-layer values are reproduced from its published
   σ_k and h_k arrays (shipped in tests/data/spectral-alignment with their license).
2. Properties on synthetic spectra: exact exponent recovery on power laws, BIC
   picking the generating model, the zeta bound, NaN-with-reason, input errors.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curvprobe.spectral.fits import (
    RANK_MODEL_PARAMS,
    RANK_MODELS,
    alpha_gamma_s,
    ols_fit,
    participation_ratio,
    power_law_fit,
    rank_profile,
    s_weight,
    zeta_bound,
)

REL = 1e-6
TRIANGLE_KEYS = (
    "alpha",
    "r2_alpha",
    "gamma",
    "r2_gamma",
    "s_hessian",
    "r2_s_hessian",
    "predicted_s",
    "triangle_error",
    "triangle_relative_error",
)
TRIANGLE_FILE = "results_alpha_triangle.json"
MODEL_FIT_FILE = "results_model_fit_comparison.json"
ENV_VAR = "CURVPROBE_REFERENCE_DIR"


# --------------------------------------------------------------------------- #
# reference data
# --------------------------------------------------------------------------- #


def _reference_dir() -> Path:
    """``$CURVPROBE_REFERENCE_DIR``, else the copy shipped in ``tests/data/spectral-alignment``
    (the published results, MIT-licensed; its LICENSE file is beside them)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return Path(__file__).resolve().parents[1] / "data" / "spectral-alignment"


def _load_reference() -> tuple[dict | None, str]:
    """(data, "") or (None, why it is unavailable)."""
    ref = _reference_dir()
    missing = [name for name in (TRIANGLE_FILE, MODEL_FIT_FILE) if not (ref / name).is_file()]
    if missing:
        paths = ", ".join(str(ref / name) for name in missing)
        return None, f"reference data not found: {paths} (set {ENV_VAR} to its folder)"
    triangle = json.loads((ref / TRIANGLE_FILE).read_text())
    model_fit = json.loads((ref / MODEL_FIT_FILE).read_text())
    return {"triangle": triangle, "model_fit": model_fit}, ""


REFERENCE, REFERENCE_MISSING = _load_reference()


def _unavailable() -> None:
    """Fail if the reference was requested explicitly via the env var, else skip."""
    if os.environ.get(ENV_VAR):
        pytest.fail(f"{ENV_VAR} is set but unusable: {REFERENCE_MISSING}")
    pytest.skip(REFERENCE_MISSING)


def _layers_by_key() -> dict[tuple[str, str], dict]:
    return {
        (exp["experiment"], layer["name"]): layer
        for exp in REFERENCE["triangle"]
        for layer in exp["results"]
    }


def _triangle_params() -> list:
    if REFERENCE is None:
        return [pytest.param(None, id="reference-unavailable")]
    return [
        pytest.param(layer, id=f"{exp['experiment']}/{layer['name']}")
        for exp in REFERENCE["triangle"]
        for layer in exp["results"]
    ]


def _model_fit_params() -> list:
    if REFERENCE is None:
        return [pytest.param(None, id="reference-unavailable")]
    return [
        pytest.param(layer, id=f"{layer['experiment']}/{layer['name']}")
        for layer in REFERENCE["model_fit"]["layers"]
    ]


def _close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=REL, abs_tol=0.0)


def test_reference_covers_every_layer():
    if REFERENCE is None:
        _unavailable()
    triangle = _layers_by_key()
    model_fit = REFERENCE["model_fit"]
    keys = [(layer["experiment"], layer["name"]) for layer in model_fit["layers"]]
    assert len(triangle) == len(keys) == model_fit["summary"]["n_layers"] == 24
    assert set(keys) == set(triangle)


@pytest.mark.parametrize("layer", _triangle_params())
def test_alpha_triangle_matches_reference(layer):
    if layer is None:
        _unavailable()
    fit = alpha_gamma_s(layer["sigma"], layer["h_exact"])
    assert fit.top_k == layer["top_k"]
    assert fit.reason == ""
    got = fit.to_dict()
    wrong = {
        key: (got[key], layer[key]) for key in TRIANGLE_KEYS if not _close(got[key], layer[key])
    }
    assert not wrong, f"(computed, reference) differ beyond rel {REL}: {wrong}"


@pytest.mark.parametrize("layer", _model_fit_params())
def test_rank_profile_matches_reference(layer):
    if layer is None:
        _unavailable()
    sigma = _layers_by_key()[(layer["experiment"], layer["name"])]["sigma"]
    profile = rank_profile(sigma)
    assert profile.best_model_bic == layer["best_model_bic"]
    assert _close(alpha_gamma_s(sigma, sigma).gamma, layer["gamma_reported"])
    got = profile.to_dict()
    wrong = {}
    for model, ref_fit in layer["fits"].items():
        ours = got["fits"][model]
        assert ours["valid"] is ref_fit["valid"]
        assert ours["n"] == ref_fit["n"]
        for key in (*RANK_MODEL_PARAMS[model], "rss", "aic", "bic"):
            if not _close(ours[key], ref_fit[key]):
                wrong[f"{model}.{key}"] = (ours[key], ref_fit[key])
    for key, value in layer["delta_bic"].items():
        if not _close(got["delta_bic"][key], value):
            wrong[f"delta_bic.{key}"] = (got["delta_bic"][key], value)
    assert set(layer["fits"]) == set(RANK_MODELS)
    assert not wrong, f"(computed, reference) differ beyond rel {REL}: {wrong}"


def test_rank_profile_reproduces_reference_summary():
    if REFERENCE is None:
        _unavailable()
    triangle = _layers_by_key()
    summary = REFERENCE["model_fit"]["summary"]
    wins = dict.fromkeys(RANK_MODELS, 0)
    for layer in REFERENCE["model_fit"]["layers"]:
        sigma = triangle[(layer["experiment"], layer["name"])]["sigma"]
        wins[rank_profile(sigma).best_model_bic] += 1
    assert wins == summary["wins_by_bic"]


# --------------------------------------------------------------------------- #
# synthetic spectra
# --------------------------------------------------------------------------- #

sizes = st.integers(min_value=3, max_value=60)
exponents = st.floats(min_value=0.1, max_value=3.0)
log_scales = st.floats(min_value=-5.0, max_value=5.0)


@settings(max_examples=60, deadline=None)
@given(K=sizes, gamma=exponents, alpha=st.floats(min_value=0.5, max_value=3.0), log_c=log_scales)
def test_exact_power_laws_are_recovered(K, gamma, alpha, log_c):
    k = np.arange(1, K + 1, dtype=float)
    sigma = np.exp(log_c) * k**-gamma
    fit = alpha_gamma_s(sigma, sigma**alpha)
    assert fit.reason == ""
    assert fit.alpha == pytest.approx(alpha, rel=1e-8)
    assert fit.gamma == pytest.approx(gamma, rel=1e-8)
    assert fit.s_hessian == pytest.approx(alpha * gamma, rel=1e-8)
    assert fit.predicted_s == pytest.approx(alpha * gamma, rel=1e-8)
    assert fit.triangle_error == pytest.approx(0.0, abs=1e-8 * alpha * gamma)
    for r2 in (fit.r2_alpha, fit.r2_gamma, fit.r2_s_hessian):
        assert r2 == pytest.approx(1.0, abs=1e-9)
    assert (fit.n_alpha, fit.n_s, fit.n_gamma) == (K, K, K)
    weight = s_weight(sigma)
    assert weight.s_weight == pytest.approx(gamma, rel=1e-8)
    assert weight.r2_s_weight == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    h=st.lists(st.floats(min_value=-10.0, max_value=10.0), min_size=3, max_size=30),
    data=st.data(),
)
def test_s_ignores_order_and_alpha_ignores_nonpositive_h(h, data):
    h = np.array(h)
    K = h.size
    sigma = np.sort(np.exp(np.linspace(0.0, -3.0, K)))[::-1]
    perm = np.array(data.draw(st.permutations(range(K))))
    fit = alpha_gamma_s(sigma, h)
    shuffled = alpha_gamma_s(sigma, h[perm])
    np.testing.assert_equal(shuffled.s_hessian, fit.s_hessian)
    np.testing.assert_equal(shuffled.r2_s_hessian, fit.r2_s_hessian)
    positive = h > 0
    if positive.sum() >= 3 and np.ptp(sigma[positive]) > 0:
        line = power_law_fit(sigma[positive], h[positive])
        assert fit.alpha == pytest.approx(line.slope, rel=1e-12, abs=1e-12)
        assert fit.n_alpha == positive.sum()
    else:
        assert math.isnan(fit.alpha) and fit.reason


def _orthogonal_noise(K: int, scale: float) -> np.ndarray:
    """Deterministic wiggle with RMS ``scale``, orthogonal to every model's design columns.

    The generating model then fits with RSS = K·scale² exactly, and a nesting
    model (log-normal ⊃ power law) cannot lower it, so only the penalty differs.
    """
    k = np.arange(1, K + 1, dtype=float)
    wiggle = np.sin(2.3 * k + 0.7) * np.cos(0.37 * k * k)
    span, _ = np.linalg.qr(np.column_stack([np.ones(K), np.log(k), np.log(k) ** 2, k]))
    wiggle -= span @ (span.T @ wiggle)
    return scale * math.sqrt(K) * wiggle / np.linalg.norm(wiggle)


bic_sizes = st.integers(min_value=8, max_value=60)


@settings(max_examples=30, deadline=None)
@given(K=bic_sizes, gamma=st.floats(min_value=0.2, max_value=3.0), log_c=log_scales)
def test_bic_picks_power_law(K, gamma, log_c):
    k = np.arange(1, K + 1, dtype=float)
    profile = rank_profile(np.exp(log_c - gamma * np.log(k) + _orthogonal_noise(K, 1e-4)))
    assert profile.best_model_bic == "power_law"
    assert profile.fits["power_law"].params["gamma"] == pytest.approx(gamma, rel=1e-6)
    assert profile.delta_bic["ln_minus_pl"] == pytest.approx(math.log(K), rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(K=bic_sizes, beta=st.floats(min_value=0.02, max_value=1.0), log_c=log_scales)
def test_bic_picks_exponential(K, beta, log_c):
    k = np.arange(1, K + 1, dtype=float)
    profile = rank_profile(np.exp(log_c - beta * k + _orthogonal_noise(K, 1e-4)))
    assert profile.best_model_bic == "exponential"
    assert profile.fits["exponential"].params["beta"] == pytest.approx(beta, rel=1e-5)
    assert profile.delta_bic["exp_minus_pl"] < 0


@settings(max_examples=30, deadline=None)
@given(
    K=bic_sizes,
    a=st.floats(min_value=-1.0, max_value=-0.05),
    b=st.floats(min_value=-2.0, max_value=0.0),
    log_c=log_scales,
)
def test_bic_picks_lognormal(K, a, b, log_c):
    log_k = np.log(np.arange(1, K + 1, dtype=float))
    profile = rank_profile(np.exp(log_c + b * log_k + a * log_k**2 + _orthogonal_noise(K, 1e-4)))
    assert profile.best_model_bic == "lognormal"
    params = profile.fits["lognormal"].params
    assert params["a"] == pytest.approx(a, rel=1e-4)
    assert profile.delta_bic["ln_minus_pl"] < 0 and profile.delta_bic["ln_minus_exp"] < 0


def test_information_criteria_formulas():
    sigma = np.exp(-0.5 * np.arange(1, 13) ** 0.7)
    for fit in rank_profile(sigma).fits.values():
        n, p = fit.n, fit.p
        assert fit.aic == pytest.approx(n * math.log(fit.rss / n) + 2 * p, rel=1e-12)
        assert fit.bic == pytest.approx(n * math.log(fit.rss / n) + p * math.log(n), rel=1e-12)
    assert [rank_profile(sigma).fits[m].p for m in RANK_MODELS] == [2, 2, 3]


@settings(max_examples=60, deadline=None)
@given(s=st.floats(min_value=1.05, max_value=6.0), K=st.integers(min_value=1, max_value=500))
def test_power_law_participation_below_zeta_bound(s, K):
    x = np.arange(1, K + 1, dtype=float) ** -s
    assert participation_ratio(x) <= zeta_bound(s) * (1 + 1e-12)


def test_zeta_bound_values():
    assert zeta_bound(2) == pytest.approx(2.5, rel=1e-12)
    x = np.arange(1, 200_001, dtype=float) ** -2.0
    assert participation_ratio(x) == pytest.approx(2.5, rel=1e-4)
    for bad in (1.0, 0.5, -3.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="s > 1"):
            zeta_bound(bad)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=1, max_size=50))
def test_participation_ratio_range_and_scale(values):
    x = np.array(values)
    pr = participation_ratio(x)
    assert 1.0 - 1e-12 <= pr <= x.size * (1 + 1e-12)
    assert participation_ratio(3.7 * x) == pytest.approx(pr, rel=1e-12)
    assert participation_ratio(np.full(x.size, 2.0)) == pytest.approx(x.size, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    K=st.integers(min_value=3, max_value=30),
    n_positive=st.integers(min_value=0, max_value=2),
    data=st.data(),
)
def test_fewer_than_three_positive_h_gives_nan_with_reason(K, n_positive, data):
    sigma = np.arange(1, K + 1, dtype=float) ** -1.0
    h = -np.abs(np.array(data.draw(st.lists(st.floats(0.0, 5.0), min_size=K, max_size=K))))
    where = data.draw(
        st.lists(st.integers(0, K - 1), min_size=n_positive, max_size=n_positive, unique=True)
    )
    h[where] = 1.0 + np.arange(len(where))
    fit = alpha_gamma_s(sigma, h)
    undefined = ("alpha", "r2_alpha", "s_hessian", "r2_s_hessian", "predicted_s",
                 "triangle_error", "triangle_relative_error")
    for key in undefined:
        assert math.isnan(getattr(fit, key)), key
    assert "fewer than 3 positive h" in fit.reason
    assert fit.n_alpha == fit.n_s == n_positive
    assert fit.gamma == pytest.approx(1.0, rel=1e-9)


def test_too_short_profiles_give_nan_not_errors():
    fit = alpha_gamma_s([2.0, 1.0], [1.0, 0.5])
    assert math.isnan(fit.gamma) and "K=2" in fit.reason
    profile = rank_profile([3.0, 2.0, 1.0])
    assert not profile.fits["lognormal"].valid
    assert math.isnan(profile.fits["lognormal"].bic)
    assert math.isnan(profile.delta_bic["ln_minus_pl"])
    assert profile.best_model_bic in ("power_law", "exponential")
    assert "lognormal" in profile.reason
    assert math.isnan(s_weight([2.0, 1.0]).s_weight)


@pytest.mark.parametrize(
    ("singular_values", "h", "match"),
    [
        ([3.0, 2.0, 1.0], [1.0, 1.0], "same length"),
        ([3.0, math.nan, 1.0], [1.0, 1.0, 1.0], "singular_values has 1 non-finite"),
        ([3.0, 2.0, 1.0], [1.0, math.inf, 1.0], "h has 1 non-finite"),
        ([3.0, 2.0, 0.0], [1.0, 1.0, 1.0], "strictly positive"),
        ([3.0, -2.0, -1.0], [1.0, 1.0, 1.0], "strictly positive"),
        ([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], "decreasing order"),
        ([], [], "singular_values is empty"),
        ([[3.0, 2.0, 1.0]], [[1.0, 1.0, 1.0]], "1-D"),
    ],
)
def test_alpha_gamma_s_rejects_bad_input(singular_values, h, match):
    with pytest.raises(ValueError, match=match):
        alpha_gamma_s(singular_values, h)


def test_other_functions_reject_bad_input():
    with pytest.raises(ValueError, match="decreasing order"):
        rank_profile([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        rank_profile([3.0, math.inf, 1.0])
    with pytest.raises(ValueError, match="strictly positive"):
        s_weight([3.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="all-zero"):
        participation_ratio([0.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        participation_ratio([1.0, math.nan])
    with pytest.raises(ValueError, match="same length"):
        ols_fit([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="identical"):
        ols_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="strictly positive"):
        power_law_fit([1.0, 2.0, 3.0], [1.0, -2.0, 3.0])


def test_ols_fit_matches_closed_form():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 3.0, 2.0, 5.0])
    fit = ols_fit(x, y)
    assert fit.slope == pytest.approx(1.1)
    assert fit.intercept == pytest.approx(1.1)
    rss = np.sum((y - (1.1 + 1.1 * x)) ** 2)
    assert fit.r2 == pytest.approx(1 - rss / np.sum((y - y.mean()) ** 2))
    assert fit.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
