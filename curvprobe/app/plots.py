"""Figures from curvprobe result Datasets: spectral core and stabilization.

Every function takes result ``xarray.Dataset`` objects and returns a
:class:`matplotlib.figure.Figure` built without pyplot on the Agg canvas: no
global backend switch, no window, no ``show``; save it with ``fig.savefig``.
Nothing here computes a measurement — fits shown are recomputed from the
Dataset's own arrays, exactly as the measurement did (α and rank-profile fits
with :mod:`curvprobe.spectral.fits`, slopes in k with
:func:`curvprobe.criteria.theory.empirical_slope`).

Sections (each self-contained; add new ones below, with their own helpers):

- Spectral core (``docs/spectral.md``) — from :func:`curvprobe.spectral.layer_spectra`:
  :func:`plot_alpha_fits` (log h vs log σ per layer with the α line),
  :func:`plot_spectral_transfer` (measured s vs αγ across layers),
  :func:`plot_rank_profile_bic` (rank-profile BIC winners),
  :func:`plot_alpha_by_layer_type` (α by layer type); from
  :func:`curvprobe.spectral.kronecker_alignment`: :func:`plot_kronecker_alignment`
  (α against its predictions β + φ and 2 + φ per layer).
- Stabilization (the figures of `docs/estimators.md`) — from :func:`curvprobe.stabilization`,
  :func:`curvprobe.quadratic_validity` and :func:`curvprobe.criteria.convergence.mc_convergence`:
  :func:`plot_criteria_vs_k` (Δ₁, Δ₂, Δ₂^(D) and GM against k, log–log, with
  fitted slopes),
  :func:`plot_subspace_ratio` (Δ₂^(D)/Δ₂ against k per D and σ),
  :func:`plot_validity` (quadratic-validity relative error against σ),
  :func:`plot_mc_convergence` (direct and quadratic MC against S, with GM),
  :func:`plot_gm_agreement` (|direct − GM| / |direct| over D and σ),
  :func:`plot_stage_timings` (wall time per stage and per estimator),
  :func:`plot_captured_fraction` (the share of Δ₂ − Δ₁² inside the subspace
  against k),
  :func:`stabilization_figures` (all of those that the given Datasets allow).
  A result over several orderings is drawn through its ordering averages
  (:func:`curvprobe.criteria.decomposition.estimates`). Criteria in loss
  (Δ₁, sphere) and in loss^p (Δ_p and its estimators) never share a y axis
  (:func:`unit_groups`, units from the ``estimator_units`` coordinate); axes
  are labelled in words with their units, and panels comparing one quantity
  share their y scale.
- Curriculum (:mod:`curvprobe.app.curriculum_run`): :func:`plot_curriculum`
  (criteria against k, mean ± std across seeds, validation loss on a second axis).
- Spectral density (:func:`curvprobe.spectral_density`, ``curvprobe density``):
  :func:`plot_spectral_density` (the smoothed SLQ density on a log scale, the
  quadrature nodes, and a dense eigenvalue histogram when one is given).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
from scipy.stats import wasserstein_distance

from curvprobe.criteria.decomposition import estimates
from curvprobe.criteria.spec import ESTIMATORS, SUBSPACE

__all__ = [
    "CRITERION_LABELS",
    "STABILIZATION_RUN",
    "SURROGATE_TIMING_NOTE",
    "criterion_axis_label",
    "estimator_units",
    "plot_alpha_by_layer_type",
    "plot_alpha_fits",
    "plot_captured_fraction",
    "plot_criteria_vs_k",
    "plot_curriculum",
    "plot_gm_agreement",
    "plot_hessian_report",
    "plot_kronecker_alignment",
    "plot_mc_convergence",
    "plot_rank_profile_bic",
    "plot_spectral_density",
    "plot_spectral_transfer",
    "plot_stage_timings",
    "plot_subspace_ratio",
    "plot_validity",
    "pretty_units",
    "save_figure",
    "slope_or_none",
    "stabilization_figures",
    "unit_groups",
]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# =========================================================================== #
# Spectral core
# =========================================================================== #

SpectraLike = xr.Dataset | Sequence[xr.Dataset] | Mapping[str, xr.Dataset]

_RANK_MODEL_COLORS = {"power_law": "C0", "exponential": "C1", "lognormal": "C2", "": "0.6"}


def _labelled(spectra: SpectraLike) -> list[tuple[str, xr.Dataset]]:
    """(label, dataset) pairs: a mapping keeps its keys; else the ``model`` attr."""
    if isinstance(spectra, xr.Dataset):
        return [(str(spectra.attrs.get("model", "")), spectra)]
    if isinstance(spectra, Mapping):
        return [(str(key), cast(xr.Dataset, ds)) for key, ds in spectra.items()]
    return [(str(ds.attrs.get("model", f"#{i}")), ds) for i, ds in enumerate(spectra)]


def _short(name: str) -> str:
    """Layer name without a trailing ``.weight``."""
    return name[: -len(".weight")] if name.endswith(".weight") else name


def plot_alpha_fits(spectra: xr.Dataset, *, layers: Sequence[str] | None = None,
                    ncols: int = 4) -> Figure:
    """log h_k against log σ_k, one panel per layer, with the α line.

    Filled markers are the points the α fit used (σ above the rank tolerance,
    h > 0); hollow markers show |h| where h ≤ 0 (not fitted). The line is the
    OLS fit of log h on log σ (slope α, from the Dataset's own arrays).

    Parameters
    ----------
    spectra
        A ``layer_spectra`` Dataset.
    layers
        Subset of ``spectra.layer`` to draw (default all).
    ncols
        Panels per row.
    """
    from curvprobe.spectral.fits import power_law_fit

    names = list(spectra.layer.values) if layers is None else list(layers)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(3.2 * ncols, 2.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        row = spectra.sel(layer=name)
        sv, h = row.singular_value.values, row.h.values
        used = (np.arange(sv.size) < int(row.n_fit)) & (h > 0)
        ax.loglog(sv[used], h[used], "o", ms=4, color="C0", label="h > 0")
        neg = ~used & (h != 0)
        if neg.any():
            ax.loglog(sv[neg], np.abs(h[neg]), "o", ms=4, mfc="none", color="C3",
                      label="|h|, not fitted")
        alpha = float(row.alpha)
        if used.sum() >= 2 and math.isfinite(alpha):
            fit = power_law_fit(sv[used], h[used])
            xs = np.array([sv[used].min(), sv[used].max()])
            ax.loglog(xs, np.exp(fit.intercept) * xs**fit.slope, "-", color="k", lw=1)
            title = f"{_short(name)}\nα={alpha:.2f}, R²={float(row.r2_alpha):.2f}"
        else:
            title = f"{_short(name)}\nα undefined"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("σ_k", fontsize=8)
        ax.set_ylabel("h_k", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if len(names):
        axes[0].legend(fontsize=6)
    return fig


def plot_spectral_transfer(spectra: SpectraLike) -> Figure:
    """Measured s against the prediction αγ, one point per layer, with s = αγ.

    Parameters
    ----------
    spectra
        One ``layer_spectra`` Dataset, a list of them, or a mapping
        ``label -> Dataset`` (one marker per dataset, colour per
        ``layer_group``). Layers with NaN s or αγ are left out.
    """
    fig = _figure(5.0, 4.5)
    ax = fig.subplots()
    markers = "osD^v<>"
    groups = sorted({str(g) for _, ds in _labelled(spectra) for g in ds.layer_group.values})
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    seen: set[str] = set()
    values = []
    for i, (label, ds) in enumerate(_labelled(spectra)):
        for name in ds.layer.values:
            row = ds.sel(layer=name)
            s, pred = float(row.s_hessian), float(row.predicted_s)
            if not (math.isfinite(s) and math.isfinite(pred)):
                continue
            group = str(row.layer_group.values)
            key = f"{label} {group}".strip()
            ax.plot(pred, s, markers[i % len(markers)], color=colors[group], ms=6,
                    label=key if key not in seen else None)
            seen.add(key)
            values += [s, pred]
    if values:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="s = αγ")
        ax.legend(fontsize=7)
    ax.set_xlabel("predicted s = αγ")
    ax.set_ylabel("measured s (Hessian decay)")
    ax.set_title("Spectral transfer across layers")
    return fig


def plot_rank_profile_bic(spectra: SpectraLike) -> Figure:
    """Rank-profile model comparison: ΔBIC per layer and BIC winners by layer group.

    Left: BIC(exponential) − BIC(power law) and BIC(log-normal) − BIC(power law)
    per layer (negative = the alternative is preferred; |ΔBIC| > 2 is
    conventionally meaningful). Right: how often each model wins, per layer group.
    """
    from curvprobe.spectral.fits import RANK_MODELS

    rows = [(label, ds.sel(layer=name)) for label, ds in _labelled(spectra) for name in ds.layer.values]
    fig = _figure(max(6.0, 0.35 * len(rows) + 4.0), 4.0)
    ax_delta, ax_wins = fig.subplots(1, 2, width_ratios=[max(1, len(rows)), 4])
    x = np.arange(len(rows))
    for offset, model, color in ((-0.2, "exponential", "C1"), (0.2, "lognormal", "C2")):
        delta = [float(r.bic.sel(rank_model=model) - r.bic.sel(rank_model="power_law")) for _, r in rows]
        ax_delta.bar(x + offset, delta, width=0.4, color=color, label=f"{model} − power law")
    ax_delta.axhline(0, color="k", lw=0.8)
    ax_delta.axhline(-2, color="k", lw=0.5, ls=":")
    ax_delta.set_xticks(x, [f"{label}:{_short(str(r.layer.values))}" if len(_labelled(spectra)) > 1
                            else _short(str(r.layer.values)) for label, r in rows],
                        rotation=75, fontsize=6)
    ax_delta.set_ylabel("ΔBIC")
    ax_delta.legend(fontsize=7)
    ax_delta.set_title("Rank-profile fits of log σ_k")
    groups = sorted({str(r.layer_group.values) for _, r in rows})
    bottom = np.zeros(len(groups))
    for model in (*RANK_MODELS, ""):
        counts = np.array([sum(1 for _, r in rows if str(r.layer_group.values) == g
                               and str(r.best_model_bic.values) == model) for g in groups], dtype=float)
        if counts.any():
            ax_wins.bar(groups, counts, bottom=bottom, color=_RANK_MODEL_COLORS[model],
                        label=model or "no valid fit")
            bottom += counts
    ax_wins.set_ylabel("layers")
    ax_wins.set_title("BIC winner")
    ax_wins.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax_wins.legend(fontsize=7)
    return fig


def plot_alpha_by_layer_type(spectra: SpectraLike, *, by: str = "layer_group") -> Figure:
    """α per layer, grouped by a per-layer coordinate (default ``layer_group``).

    Points are jittered horizontally; the bar is the group median. The dashed
    line marks α = 2 (the Kronecker headline with β = 2, φ = 0).

    Parameters
    ----------
    spectra
        One Dataset, a list, or a mapping ``label -> Dataset``; points
        of different datasets get different markers.
    by
        Coordinate over ``layer`` to group on ("layer_group",
        "layer_kind", "module_type", …).
    """
    labelled = _labelled(spectra)
    groups = sorted({str(g) for _, ds in labelled for g in ds[by].values})
    fig = _figure(max(4.0, 1.2 * len(groups) + 1.5), 4.0)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    markers = "osD^v<>"
    per_group: dict[str, list[float]] = {g: [] for g in groups}
    for i, (label, ds) in enumerate(labelled):
        xs, ys = [], []
        for name in ds.layer.values:
            row = ds.sel(layer=name)
            alpha = float(row.alpha)
            if not math.isfinite(alpha):
                continue
            g = str(row[by].values)
            per_group[g].append(alpha)
            xs.append(groups.index(g) + rng.uniform(-0.15, 0.15))
            ys.append(alpha)
        ax.plot(xs, ys, markers[i % len(markers)], color=f"C{i}", ms=6, alpha=0.8, label=label or None)
    for j, g in enumerate(groups):
        if per_group[g]:
            ax.hlines(np.median(per_group[g]), j - 0.3, j + 0.3, color="k", lw=2)
    ax.axhline(2.0, color="0.5", ls="--", lw=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("α (slope of log h on log σ)")
    ax.set_title(f"α by {by.replace('_', ' ')}")
    if any(label for label, _ in labelled):
        ax.legend(fontsize=7)
    return fig


def plot_kronecker_alignment(kron: xr.Dataset) -> Figure:
    """Per layer: the measured α, its parts β and φ, and the predictions β + φ and 2 + φ.

    Layers whose fit is undefined (NaN) have no marker.

    Parameters
    ----------
    kron
        A ``kronecker_alignment`` Dataset (per-layer ``alpha``, ``beta``, ``phi``,
        ``alpha_pred_beta_phi``, ``alpha_pred_2_phi``; dimensionless slopes).
    """
    names = [str(n) for n in kron.layer.values]
    fig = _figure(max(4.5, 0.9 * len(names) + 2.0), 4.0)
    ax = fig.subplots()
    x = np.arange(len(names), dtype=np.float64)
    series = [("alpha", "α (measured)", "o", "k"), ("beta", "β", "s", "C0"), ("phi", "φ", "v", "C1"),
              ("alpha_pred_beta_phi", "β + φ", "D", "C2"), ("alpha_pred_2_phi", "2 + φ", "x", "C3")]
    for i, (var, label, marker, color) in enumerate(series):
        ax.plot(x + 0.08 * (i - 2), kron[var].values.astype(np.float64), marker, color=color, ms=6,
                mfc="none" if var.startswith("alpha_pred") else color, ls="none", label=label)
    ax.axhline(2.0, color="0.5", ls="--", lw=1)
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.set_xticks(x, [_short(n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("slope on log σ_k")
    ax.set_title("Kronecker alignment: α = β + φ per layer")
    ax.legend(fontsize=7)
    return fig


# =========================================================================== #
# Stabilization
# =========================================================================== #

CRITERION_LABELS = {name: entry.label for name, entry in ESTIMATORS.items()}
"""Legend label of each estimator (from the registry :data:`curvprobe.criteria.spec.ESTIMATORS`)."""
_COLORS = {"delta1": "C7", "full_mc": "C0", "sphere": "C5", "direct_mc": "C3", "quad_mc": "C2",
           "gm": "k", "cv_mc": "C1"}


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (110 dpi) atomically to ``path``; returns the path."""
    from curvprobe.results import atomic_write

    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))


def _k_axis(ax) -> None:
    """Log k axis with plain major labels (1, 10, 100, 1000) and no minor labels."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def slope_or_none(k: np.ndarray, values: np.ndarray):
    """:func:`empirical_slope` on the positive finite points, or None if < 3 remain."""
    from curvprobe.criteria.theory import empirical_slope

    k, values = np.asarray(k, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 3 or np.ptp(k[ok]) == 0:
        return None
    return empirical_slope(k[ok], values[ok])


def _has(ds: xr.Dataset, estimator: str) -> bool:
    return "estimator" in ds.coords and estimator in ds["estimator"].values


def _outside(ds: xr.Dataset) -> dict[float, bool]:
    if "outside_validated_regime" not in ds:
        return {}
    return {float(s): bool(o) for s, o in zip(ds["sigma"].values, ds["outside_validated_regime"].values)}


def _sigma_label(ds: xr.Dataset, sigma: float) -> str:
    flag = " (beyond validated regime)" if _outside(ds).get(float(sigma)) else ""
    return f"σ = {sigma:.3g}{flag}"


_SUPERSCRIPTS = str.maketrans("0123456789.-", "⁰¹²³⁴⁵⁶⁷⁸⁹·⁻")


def estimator_units(ds: xr.Dataset, estimator: str) -> str:
    """Units of ``estimator``'s value in ``ds``: its ``estimator_units`` coordinate, else the
    registry's (:meth:`curvprobe.criteria.spec.Estimator.units` at the Dataset's ``p``)."""
    if "estimator_units" in ds.coords and _has(ds, estimator):
        return str(ds["estimator_units"].sel(estimator=estimator).values)
    return ESTIMATORS[estimator].units(float(ds.attrs.get("p", 2)))


def pretty_units(units: str) -> str:
    """``loss^2`` → ``loss²`` (powers as superscripts)."""
    base, _, power = units.partition("^")
    return base + power.translate(_SUPERSCRIPTS)


def unit_groups(ds: xr.Dataset, estimators: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The present ``estimators`` grouped by the units of their value, in order of first
    appearance: ``[(units, [names])]``. Δ₁-type criteria (means of |δ|, loss) and Δ_p-type
    ones (means of |δ|^p, loss^p) never share a y axis."""
    groups: dict[str, list[str]] = {}
    for est in estimators:
        if _has(ds, est):
            groups.setdefault(estimator_units(ds, est), []).append(est)
    return list(groups.items())


def criterion_axis_label(units: str) -> str:
    """The y-axis label of criteria in ``units``, in words with the units."""
    if units == "loss":
        return "|loss change| (loss)"
    power = units.partition("^")[2]
    what = "mean squared loss change" if power == "2" else f"mean |loss change|^{power}"
    return f"{what} ({pretty_units(units)})"


def _criterion_label(est: str, dim: int, fit) -> str:
    """Legend entry: the estimator's label (with its D) and its fitted slope in k."""
    label = CRITERION_LABELS.get(est, est)
    if ESTIMATORS[est].space == SUBSPACE:
        label = label.replace("^(D)", f"^({dim})") + ("" if "^(" in label else f", D={dim}")
    if fit is not None:
        label += f": slope {fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
    return label


def _draw_criteria(ax, value: xr.DataArray, stderr: xr.DataArray, k: np.ndarray, sigma: float,
                   dim: int, names: Sequence[str]) -> None:
    """One panel of :func:`plot_criteria_vs_k`: ``names`` (one unit) against k at ``sigma``."""
    for est in names:
        cell: dict[str, Any] = {"sigma": sigma, "dim": dim, "estimator": est}
        y, se = value.sel(cell).values, stderr.sel(cell).values
        ok = np.isfinite(y) & (y > 0)
        label = _criterion_label(est, dim, slope_or_none(k, y))
        style = dict(color=_COLORS.get(est), ms=4, lw=1.2, label=label)
        if est == "gm":
            ax.plot(k[ok], y[ok], "--", **style)
        else:
            ax.errorbar(k[ok], y[ok], yerr=np.where(np.isfinite(se[ok]), se[ok], 0), fmt="o-",
                        capsize=2, **style)
    if "direct_mc" in names:
        y0 = value.sel(sigma=sigma, dim=dim, estimator="direct_mc").values
        ok = np.isfinite(y0) & (y0 > 0)
        if ok.any():
            k0, v0 = k[ok][0], y0[ok][0]
            ax.plot(k, v0 * (k / k0) ** -2.0, ":", color="0.5", lw=1, label="k⁻² reference")


def plot_criteria_vs_k(ds: xr.Dataset, *, dim: int | None = None,
                       estimators: Sequence[str] = ("delta1", "full_mc", "direct_mc", "gm"),
                       sigmas: Sequence[float] | None = None) -> Figure:
    """Criteria against k on log–log axes, one column per σ, one row per unit, with fitted slopes.

    Criteria in loss (Δ₁, sphere: means of |δ_k|) and in loss^p (Δ_p and its
    estimators: means of |δ_k|^p) are on separate rows, each row on one
    shared y scale. Each legend entry gives the OLS slope of log value on
    log k with its 95 % confidence interval; error bars are ±1 standard
    error. The dotted line is k⁻² through the first Δ₂^(D) point (the rate
    bound's order). A result over several orderings shows the ordering
    averages and their standard errors.

    Parameters
    ----------
    ds
        A :func:`curvprobe.stabilization` Dataset.
    dim
        D of the subspace criteria (default the largest).
    estimators
        Which criteria to draw (those present).
    sigmas
        Columns (default every σ).
    """
    dim = int(ds["dim"].values.max()) if dim is None else int(dim)
    sigmas = list(ds["sigma"].values) if sigmas is None else list(sigmas)
    groups = unit_groups(ds, estimators) or [("loss", [])]
    fig = _figure(4.6 * len(sigmas), 3.4 * len(groups) + 0.5)
    axes = fig.subplots(len(groups), len(sigmas), squeeze=False, sharex=True, sharey="row")
    k = ds["k"].values.astype(float)
    value, stderr = estimates(ds)
    for row, (units, names) in enumerate(groups):
        for col, sigma in enumerate(sigmas):
            ax = axes[row, col]
            _draw_criteria(ax, value, stderr, k, sigma, dim, names)
            _k_axis(ax)
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
            if row == 0:
                ax.set_title(_sigma_label(ds, sigma), fontsize=9)
            if row == len(groups) - 1:
                ax.set_xlabel("k (samples)")
            if col == 0:
                ax.set_ylabel(criterion_axis_label(units))
    fig.suptitle("Stabilization criteria against k (rows: units of the criterion)", fontsize=11)
    return fig


def _ratio(ds: xr.Dataset, cell: dict[str, Any], numerator: str,
           denominator: str) -> tuple[np.ndarray, np.ndarray]:
    """``numerator / denominator`` at ``cell`` over k (of the ordering means, if any) with its
    standard error by the delta method.

    The two estimates draw independent noise (different streams), so their
    Monte Carlo errors add in quadrature. Over several orderings they share
    each ordering's samples; that part of the error is the spread over the
    orderings of the paired residuals ``num_r − ratio · den_r`` (the ratio
    estimator's variance), which keeps their correlation.
    """
    value, stderr = estimates(ds)
    num, den = (value.sel({**cell, "estimator": e}).values for e in (numerator, denominator))
    ratio = num / den
    several = "ordering" in ds["value"].dims
    mc = ds["ordering_mc_stderr"] if several else stderr
    se_num, se_den = (mc.sel({**cell, "estimator": e}).values for e in (numerator, denominator))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = ratio**2 * ((se_num / num) ** 2 + (se_den / den) ** 2)
        if several:
            per = [ds["value"].sel({**cell, "estimator": e}).transpose("k", "ordering").values
                   for e in (numerator, denominator)]
            residual = per[0] - ratio[:, None] * per[1]
            var = var + residual.var(axis=1, ddof=1) / residual.shape[1] / den**2
    return ratio, np.sqrt(var)


def plot_subspace_ratio(ds: xr.Dataset, *, numerator: str = "direct_mc",
                        denominator: str = "full_mc") -> Figure:
    """Δ₂^(D)/Δ₂ against k, one panel per σ (shared y scale), one line per D with ±1 standard error.

    Over several orderings the ratio of the ordering means. The standard
    error is the delta method's (see ``_ratio``: independent Monte Carlo
    draws, paired orderings). The grey line is 1.
    """
    sigmas = list(ds["sigma"].values)
    fig = _figure(4.2 * len(sigmas), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(sigmas), squeeze=False, sharey=True)).ravel()
    if not (_has(ds, numerator) and _has(ds, denominator)):
        axes[0].text(0.5, 0.5, f"needs {numerator} and {denominator}", ha="center",
                     transform=axes[0].transAxes)
        return fig
    k = ds["k"].values.astype(float)
    dims = list(ds["dim"].values)
    for ax, sigma in zip(axes, sigmas):
        for di, D in enumerate(dims):
            ratio, se = _ratio(ds, {"sigma": sigma, "dim": D}, numerator, denominator)
            ok = np.isfinite(ratio)
            ax.errorbar(k[ok] * (1 + 0.03 * (di - (len(dims) - 1) / 2)), ratio[ok],
                        yerr=np.where(np.isfinite(se[ok]), se[ok], 0), fmt="o-", ms=3.5, lw=1.1,
                        capsize=2, color=f"C{di}", label=f"D = {int(D)}")
        ax.axhline(1.0, color="0.5", lw=1)
        _k_axis(ax)
        ax.set_xlabel("k (samples)")
        ax.set_title(_sigma_label(ds, float(sigma)), fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, title="subspace dimension", title_fontsize=7)
    axes[0].set_ylabel(f"ratio {CRITERION_LABELS.get(numerator, numerator)}\n"
                       f"/ {CRITERION_LABELS.get(denominator, denominator)} (±1 s.e.)")
    fig.suptitle("Subspace probe against the full space: Δ₂^(D) / Δ₂", fontsize=11)
    return fig


def plot_validity(validity: xr.Dataset) -> Figure:
    """Relative error of the quadratic model against σ.

    Points: mean over draws with ±1 std (clipped at the axis); grey dots: the
    individual draws; dashed: the threshold; shaded: the validated regime.
    """
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    sigma = validity["sigma"].values
    mean, std = validity["rel_error_mean"].values, validity["rel_error_std"].values
    if "rel_error" in validity:
        draws = validity["rel_error"].values
        for j, s in enumerate(sigma):
            ax.plot(np.full(draws.shape[0], s), draws[:, j], ".", color="0.7", ms=3)
    lower = np.clip(mean - std, mean * 1e-3, None)
    ax.errorbar(sigma, mean, yerr=[mean - lower, std], fmt="o-", color="C0", capsize=3,
                label="mean relative error (±1 std)")
    threshold = float(validity.attrs.get("threshold", np.nan))
    if math.isfinite(threshold):
        ax.axhline(threshold, color="C3", ls="--", lw=1, label=f"threshold {threshold:g}")
    regime = float(validity.attrs.get("validated_sigma_max", np.nan))
    if math.isfinite(regime):
        ax.axvspan(sigma.min() / 1.5, regime, color="C2", alpha=0.12,
                   label=f"validated: σ ≤ {regime:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("σ (parameter units)")
    ax.set_ylabel("|quadratic model − ΔL| / |ΔL|")
    ax.set_title(f"Quadratic validity of L_k around w* (k = {validity.attrs.get('k', '?')})")
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    return fig


def _regime(*datasets: xr.Dataset | None) -> float:
    """``validated_sigma_max`` from the first Dataset that records it (NaN if none does)."""
    for ds in datasets:
        if ds is not None and "validated_sigma_max" in ds.attrs:
            return float(ds.attrs["validated_sigma_max"])
    return float("nan")


def plot_mc_convergence(conv: xr.Dataset, *, sigmas: Sequence[float] | None = None,
                        validity: xr.Dataset | None = None) -> Figure:
    """Direct MC and quadratic MC against the number of draws S, with GM.

    One panel per (σ, D), one shared y scale per row (σ); running means over
    nested prefixes of the same draws with ±1 standard error. With the
    validated regime (``validity``, or ``validated_sigma_max`` in ``conv``'s
    attrs), panels beyond it are shaded and say so: there the surrogate
    estimators (quadratic MC, GM) are proxies, not the criterion.
    """
    sigmas = list(conv["sigma"].values) if sigmas is None else list(sigmas)
    dims = list(conv["dim"].values)
    regime = _regime(validity, conv)
    units = pretty_units(str(conv["value"].attrs.get("units", "loss^2")))
    fig = _figure(3.4 * len(dims), 3.0 * len(sigmas) + 0.4)
    axes = fig.subplots(len(sigmas), len(dims), squeeze=False, sharey="row")
    S = conv["S"].values
    for r, sigma in enumerate(sigmas):
        beyond = math.isfinite(regime) and float(sigma) > regime
        tag = " — beyond the validated regime" if beyond else (
            " — validated" if math.isfinite(regime) else "")
        for c, D in enumerate(dims):
            ax = axes[r, c]
            cell = conv.sel(sigma=sigma, dim=D)
            for j, est in enumerate(("direct_mc", "quad_mc")):
                y = cell["value"].sel(estimator=est).values
                se = cell["stderr"].sel(estimator=est).values
                ax.errorbar(S * (1 + 0.04 * (j - 0.5)), y, yerr=se, fmt="o-", ms=3.5, capsize=2,
                            color=_COLORS[est], label=CRITERION_LABELS[est])
            gm = float(cell["value"].sel(estimator="gm").values[-1])
            ax.axhline(gm, color="k", ls="--", lw=1, label=CRITERION_LABELS["gm"])
            if beyond:
                ax.set_facecolor("#fdf0ee")
            ax.set_xscale("log", base=2)
            ax.set_title(f"σ = {float(sigma):.3g}, D = {int(D)}{tag}", fontsize=8,
                         color="C3" if beyond else "k")
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            if r == len(sigmas) - 1:
                ax.set_xlabel("Monte Carlo draws S")
            if c == 0:
                ax.set_ylabel(f"estimate of Δ₂^(D) ({units})")
    axes[0, 0].legend(fontsize=7)
    note = (f"; shaded: σ beyond the validated regime σ ≤ {regime:.3g}" if math.isfinite(regime)
            else "; validated regime unknown")
    fig.suptitle(f"Monte Carlo convergence to GM at k = {conv.attrs.get('k', '?')}{note}", fontsize=10)
    return fig


def gm_relative_gap(ds: xr.Dataset) -> xr.DataArray:
    """``|direct_mc − gm| / |direct_mc|`` over (k, sigma, dim) (ordering averages if any)."""
    value, _ = estimates(ds)
    direct = value.sel(estimator="direct_mc")
    gm = value.sel(estimator="gm")
    return abs(direct - gm) / abs(direct)


def plot_gm_agreement(ds: xr.Dataset, *, k: int | None = None) -> Figure:
    """Heat map of |Direct − GM| / |Direct| over D and σ.

    Left: at one k (default the largest); right: the median over all k.
    Columns of σ beyond the validated regime are marked with ``*``.
    """
    fig = _figure(9.0, 3.6)
    axes = fig.subplots(1, 2)
    if not (_has(ds, "direct_mc") and _has(ds, "gm")):
        axes[0].text(0.5, 0.5, "needs direct_mc and gm", ha="center", transform=axes[0].transAxes)
        return fig
    gap = gm_relative_gap(ds)
    k = int(ds["k"].values.max()) if k is None else int(k)
    outside = _outside(ds)
    xlabels = [f"{s:.3g}{'*' if outside.get(float(s)) else ''}" for s in ds["sigma"].values]
    ylabels = [str(int(d)) for d in ds["dim"].values]
    panels = ((gap.sel(k=k), f"at k = {k}"), (gap.median("k"), "median over k"))
    for ax, (arr, title) in zip(axes, panels):
        data = arr.transpose("dim", "sigma").values
        with np.errstate(divide="ignore"):
            shown = np.log10(np.clip(data, 1e-6, None))
        image = ax.imshow(shown, cmap="viridis", aspect="auto", origin="lower", vmin=-4, vmax=1)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(j, i, f"{data[i, j]:.2g}", ha="center", va="center", fontsize=7,
                        color="w" if shown[i, j] < -1.5 else "k")
        ax.set_xticks(range(len(xlabels)), xlabels, fontsize=7)
        ax.set_yticks(range(len(ylabels)), ylabels)
        ax.set_xlabel("probe scale σ  (* beyond the validated regime)")
        ax.set_ylabel("subspace dimension D")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, label="log₁₀ relative gap |direct MC − GM| / |direct MC|")
    fig.suptitle("Agreement of the closed form GM with direct Monte Carlo", fontsize=11)
    return fig


_STAGE_LABELS = {
    "losses_at_w_star": "losses at w* (Δ₁)",
    "eval_full_mc": "eval: full-space MC",
    "eval_sphere": "eval: sphere MC",
    "subspace": "I: subspace (Lanczos)",
    "assembly": "II: coefficient assembly",
    "eval_direct_mc": "III: eval direct MC",
    "eval_surrogate": "III: eval surrogates (quad MC, GM, CV)",
}

STABILIZATION_RUN = "stabilization run"
"""Key of ``extra`` timings standing for the whole stabilization run: :func:`plot_stage_timings`
draws the run's own stages (``stage_seconds``) in its place, so the bars follow the run order."""

SURROGATE_TIMING_NOTE = (
    "Quadratic MC and GM evaluate only the D-dimensional surrogate (O(S·D²) and O(D²) flops, "
    "microseconds): their bars are per-call overhead of a few tiny tensor operations, so GM can "
    "show slower than quadratic MC. Direct MC and CV run S perturbed forward passes over k + 1 "
    "samples: that is the cost GM removes.")
"""Caption of the per-estimator panel of :func:`plot_stage_timings`."""


def _stage_bars(ds: xr.Dataset, extra: Mapping[str, float] | None) -> dict[str, float]:
    """Bar label → seconds in run order: ``extra`` in its order with :data:`STABILIZATION_RUN`
    replaced by ``ds``'s stages (which come first when ``extra`` does not name the run)."""
    own = {}
    if "stage_seconds" in ds:
        own = {_STAGE_LABELS.get(str(s), str(s)): float(v)
               for s, v in zip(ds["stage"].values, ds["stage_seconds"].values)}
    extra = dict(extra or {})
    if STABILIZATION_RUN not in extra:
        return {**own, **extra}
    bars: dict[str, float] = {}
    for name, seconds in extra.items():
        bars.update(own if name == STABILIZATION_RUN and own else {name: seconds})
    return bars


def _estimator_seconds(ax, convergence: xr.Dataset) -> None:
    """The right panel of :func:`plot_stage_timings`: evaluation seconds per estimator."""
    ests = [str(e) for e in convergence["estimator"].values]
    sec = convergence["eval_seconds"].median(("sigma", "dim"))
    vals = np.maximum(np.array([float(sec.sel(estimator=e)) for e in ests]), 1e-9)
    ax.bar(range(len(ests)), vals, color=[_COLORS.get(e, "C0") for e in ests])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2g} s", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(ests)), [CRITERION_LABELS.get(e, e).replace(" (", "\n(") for e in ests],
                  fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("wall time per (σ, D), median (s)")
    speedup = float(sec.sel(estimator="direct_mc") / sec.sel(estimator="gm"))
    ax.set_title(f"Stage III at k = {convergence.attrs.get('k', '?')}, S = "
                 f"{convergence.attrs.get('max_samples', '?')}: GM ≈ {speedup:,.0f}× faster "
                 "than direct MC", fontsize=9)
    ax.set_xlabel(textwrap.fill(SURROGATE_TIMING_NOTE, 80), fontsize=6.5, loc="left")


def plot_stage_timings(ds: xr.Dataset, *, convergence: xr.Dataset | None = None,
                       extra: Mapping[str, float] | None = None) -> Figure:
    """Wall time per stage, in run order, and per-estimator evaluation cost.

    Left: ``ds.stage_seconds`` with ``extra`` stages such as the validity
    sweep (a :data:`STABILIZATION_RUN` entry of ``extra`` places the run's
    stages among them), top to bottom in the order they ran, log scale.
    Right (if ``convergence`` is given): seconds to evaluate each estimator
    for one (σ, D) at S draws — median over σ and D — with the direct-MC / GM
    ratio (the paper's stage-III speed-up) and :data:`SURROGATE_TIMING_NOTE`.
    """
    ncols = 2 if convergence is not None else 1
    fig = _figure(5.8 * ncols, 4.4)
    axes = np.atleast_1d(fig.subplots(1, ncols, squeeze=False)).ravel()
    stages = _stage_bars(ds, extra)
    names = list(stages)
    values = np.maximum(np.array([stages[n] for n in names], dtype=float), 1e-6)
    ax = axes[0]
    ax.barh(range(len(names)), values, color="C0")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3g} s", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_title("Stage timings, in run order", fontsize=10)
    if len(values):
        ax.set_xlim(values.min() / 3, values.max() * 20)
    if convergence is not None:
        _estimator_seconds(axes[1], convergence)
    return fig


def plot_captured_fraction(ds: xr.Dataset, *, estimator: str | None = None) -> Figure:
    """The captured fraction (Δ₂^(D) − Δ₁²)/(Δ₂ − Δ₁²) against k, one panel per σ.

    One line per D with ±1 standard error; hollow markers where the
    full-space curvature part Δ₂ − Δ₁² is within two standard errors of 0
    (the fraction is noise there). The dotted line is the plain ratio
    Δ₂^(D)/Δ₂ at the largest D, which stays near 1 whenever Δ₁² dominates
    both criteria; the grey band is Δ₁²/Δ₂ (right axis).

    Parameters
    ----------
    ds
        A :func:`curvprobe.stabilization` Dataset at p = 2 with ``full_mc``
        and a subspace estimator.
    estimator
        The subspace estimator (default cv_mc, else direct_mc, gm, quad_mc).
    """
    names = [estimator] if estimator else ["cv_mc", "direct_mc", "gm", "quad_mc"]
    name = next((n for n in names if _has(ds, n)), None)
    sigmas = list(ds["sigma"].values)
    fig = _figure(4.6 * len(sigmas), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(sigmas), squeeze=False, sharey=True)).ravel()
    if name is None or "captured_fraction" not in ds:
        axes[0].text(0.5, 0.5, "needs p = 2, full_mc and a subspace estimator", ha="center",
                     transform=axes[0].transAxes)
        return fig
    k = ds["k"].values.astype(float)
    value, _ = estimates(ds)
    dims = list(ds["dim"].values)
    for ax, sigma in zip(axes, sigmas):
        resolved = ds["curvature_resolved"].sel(sigma=sigma).values.astype(bool)
        for di, D in enumerate(dims):
            cell = {"sigma": sigma, "dim": D, "estimator": name}
            y = ds["captured_fraction"].sel(cell).values
            se = ds["captured_fraction_stderr"].sel(cell).values
            ax.errorbar(k * (1 + 0.03 * (di - 1)), y, yerr=se, fmt="-", color=f"C{di}", lw=1.2,
                        capsize=2, label=f"D = {int(D)}")
            ax.plot(k[resolved], y[resolved], "o", color=f"C{di}", ms=4)
            ax.plot(k[~resolved], y[~resolved], "o", mfc="none", color=f"C{di}", ms=4)
        ratio = (value.sel(sigma=sigma, dim=dims[-1], estimator=name)
                 / value.sel(sigma=sigma, dim=dims[-1], estimator="full_mc")).values
        ax.plot(k, ratio, ":", color="0.3", label=f"plain ratio Δ₂^(D)/Δ₂, D = {int(dims[-1])}")
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.axhline(0.0, color="0.5", lw=0.8)
        share = ax.twinx()
        share.fill_between(k, 0, ds["delta1_share"].sel(sigma=sigma).values, color="0.5", alpha=0.12)
        share.set_ylim(0, 1.05)
        if ax is axes[-1]:
            share.set_ylabel("share of Δ₁² in Δ₂ (grey band)", fontsize=8, color="0.4")
        else:
            share.tick_params(right=False, labelright=False)
        _k_axis(ax)
        ax.set_xlabel("k (samples)")
        if ax is axes[0]:
            ax.set_ylabel(f"captured fraction (Δ₂^(D) − Δ₁²)/(Δ₂ − Δ₁²)\n"
                          f"Δ₂^(D) by {CRITERION_LABELS.get(name, name)} (ratio, ±1 s.e.)")
        ax.set_title(_sigma_label(ds, sigma) + "  (hollow: Δ₂ − Δ₁² unresolved)", fontsize=8.5)
        ax.legend(fontsize=6.5, loc="best")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle("Share of the curvature-driven change Δ₂ − Δ₁² inside span(U_D)", fontsize=11)
    return fig


def stabilization_figures(ds: xr.Dataset | None = None, *, validity: xr.Dataset | None = None,
                          convergence: xr.Dataset | None = None,
                          extra_timings: Mapping[str, float] | None = None) -> dict[str, Figure]:
    """Every figure the given Datasets allow: ``{file stem: Figure}``."""
    figures: dict[str, Figure] = {}
    if ds is not None:
        figures["criteria_vs_k"] = plot_criteria_vs_k(ds)
        if _has(ds, "direct_mc") and _has(ds, "full_mc"):
            figures["subspace_ratio"] = plot_subspace_ratio(ds)
        if _has(ds, "direct_mc") and _has(ds, "gm"):
            figures["gm_agreement"] = plot_gm_agreement(ds)
        if "captured_fraction" in ds:
            figures["captured_fraction"] = plot_captured_fraction(ds)
        figures["stage_timings"] = plot_stage_timings(ds, convergence=convergence, extra=extra_timings)
    if validity is not None:
        figures["validity"] = plot_validity(validity)
    if convergence is not None:
        figures["mc_convergence"] = plot_mc_convergence(convergence, validity=validity)
    return figures


# =========================================================================== #
# Curriculum protocol
# =========================================================================== #


def _draw_seeds(ax, ds: xr.Dataset, k: np.ndarray, sigma: float, dim: int, names: Sequence[str]) -> None:
    """One panel of :func:`plot_curriculum`: ``names`` (one unit), mean ± std and each seed."""
    for est in names:
        cell = {"sigma": sigma, "dim": dim, "estimator": est}
        mean, std = ds["seed_mean"].sel(cell).values, ds["seed_std"].sel(cell).values
        color = _COLORS.get(est)
        ax.plot(k, mean, "o-", color=color, ms=4, lw=1.4,
                label=_criterion_label(est, dim, slope_or_none(k, mean)))
        if np.isfinite(std).any():
            low = np.maximum(mean - std, ds["value"].sel(cell).min("seed").values)
            ax.fill_between(k, low, mean + std, color=color, alpha=0.18)
        for s in range(ds.sizes["seed"]):
            ax.plot(k, ds["value"].sel(cell).isel(seed=s).values, "-", color=color, lw=0.5, alpha=0.5)


def _validation_loss(ax, ds: xr.Dataset, k: np.ndarray) -> None:
    """The validation loss (mean ± std across seeds) on a right axis of ``ax``."""
    right = ax.twinx()
    vm, vs = ds["validation_loss_mean"].values, ds["validation_loss_std"].values
    right.plot(k, vm, "s--", color="C4", ms=3, lw=1, label="validation loss")
    if np.isfinite(vs).any():
        right.fill_between(k, vm - vs, vm + vs, color="C4", alpha=0.12)
    right.set_ylabel("validation loss (loss)", color="C4")
    right.legend(fontsize=7, loc="upper right")


def plot_curriculum(ds: xr.Dataset, *, dim: int | None = None,
                    estimators: Sequence[str] = ("delta1", "full_mc", "direct_mc", "gm")) -> Figure:
    """Criteria against k along training, mean ± std across seeds, with the validation loss.

    One column per σ, one row per unit of the criteria (loss: Δ₁; loss^p:
    Δ_p and its estimators), each row on one shared y scale. Each criterion:
    the mean over seeds (line, with the OLS slope of its logarithm on log k
    and 95 % interval in the legend), a band of ± one standard deviation
    across seeds (its lower edge clipped at the smallest seed's value, the
    log axis has no room below 0), and each seed as a thin line. Right axis
    of the first row: the validation loss at the weights of each k (mean ±
    std across seeds). From :func:`curvprobe.app.curriculum_run.run_curriculum`.

    Parameters
    ----------
    ds
        A :func:`curvprobe.criteria.protocol.merge_seeds` Dataset.
    dim
        D of the subspace criteria (default the largest).
    estimators
        Which criteria to draw (those present).
    """
    dim = int(ds["dim"].values.max()) if dim is None else int(dim)
    sigmas = list(ds["sigma"].values)
    groups = unit_groups(ds, estimators) or [("loss", [])]
    fig = _figure(max(7.5, 5.2 * len(sigmas)), 3.8 * len(groups) + 0.4)
    axes = fig.subplots(len(groups), len(sigmas), squeeze=False, sharex=True, sharey="row")
    k = ds["k"].values.astype(float)
    for row, (units, names) in enumerate(groups):
        for col, sigma in enumerate(sigmas):
            ax = axes[row, col]
            _draw_seeds(ax, ds, k, sigma, dim, names)
            _k_axis(ax)
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            if row == 0:
                ax.set_title(f"σ = {float(sigma):.3g}, D = {dim}, {ds.sizes['seed']} seed(s)", fontsize=9)
                if "validation_loss_mean" in ds:
                    _validation_loss(ax, ds, k)
            if row == len(groups) - 1:
                ax.set_xlabel("k (samples seen − 1 at the measurement)")
            if col == 0:
                ax.set_ylabel(criterion_axis_label(units))
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Criteria along training (curriculum protocol), mean ± std across seeds", fontsize=10)
    return fig




# =========================================================================== #
# Hessian spectrum report
# =========================================================================== #


def plot_hessian_report(ds: xr.Dataset) -> Figure:
    """The spectrum of a :func:`curvprobe.spectral.hessian.hessian_report` Dataset.

    Left: the SLQ density (log scale) with the certified top and bottom
    eigenvalues marked on the axis and the trace in the title. Right: every
    layer's top eigenvalues (one row per layer), if the report has them.
    """
    layered = "layer_eigenvalue" in ds
    fig = _figure(11.0 if layered else 6.0, 4.2)
    axes = np.atleast_1d(fig.subplots(1, 2 if layered else 1, squeeze=False)).ravel()
    ax = axes[0]
    grid, density = ds["grid"].values, ds["density"].values
    ax.semilogy(grid, np.maximum(density, np.finfo(float).tiny), color="C0", lw=1.2, label="SLQ density")
    for name, color in (("top", "C3"), ("bottom", "C2")):
        values = ds[f"{name}_eigenvalue"].values
        ax.plot(values, np.full_like(values, density.max() * 1.5), "|", ms=14, color=color,
                label=f"{name} eigenvalues (certified {int(ds[f'{name}_converged'].sum())}/{values.size})")
    ax.set_xlabel("eigenvalue of H (loss/param²)")
    ax.set_ylabel("density (param²/loss)")
    ax.set_title(f"tr H = {float(ds['trace']):.4g} ± {float(ds['trace_stderr']):.2g}; "
                 f"bandwidth {ds.attrs.get('density_bandwidth', float('nan')):.2g}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    if layered:
        ax = axes[1]
        labels = [str(v) for v in ds["layer"].values]
        values = ds["layer_eigenvalue"].values
        for j in range(values.shape[1]):
            ax.plot(values[:, j], np.arange(len(labels)), "o", ms=3, color=f"C{j}", label=f"rank {j + 1}")
        ax.set_yticks(np.arange(len(labels)), labels, fontsize=6)
        ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_xlabel("top eigenvalues of the layer's Hessian block (loss/param²)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Hessian spectrum at w* over k = {ds.attrs.get('k')} samples", fontsize=11)
    return fig


# =========================================================================== #
# Spectral density
# =========================================================================== #


def plot_spectral_density(ds: xr.Dataset, *, eigenvalues: np.ndarray | None = None,
                          log: bool = True, title: str | None = None) -> Figure:
    """The SLQ spectral density of a :meth:`curvprobe.SpectralDensity.to_dataset` Dataset.

    The Gaussian-smoothed density ``ρ(t)`` (log scale by default: a Hessian's
    bulk at 0 and its outliers differ by orders of magnitude) with its
    bandwidth ``h`` in the legend, and the quadrature nodes as a rug whose
    ticks scale with their weights. With ``eigenvalues`` (a dense spectrum,
    for validation) their histogram smoothed by the same kernel is drawn too,
    and the Wasserstein-1 distance of the nodes to it relative to the
    spectral width is in the title.
    """
    fig = _figure(6.4, 4.0)
    ax = fig.subplots()
    grid, rho, h = ds["grid"].values, ds["density"].values, float(ds.attrs["bandwidth"])
    floor = np.finfo(float).tiny
    draw = ax.semilogy if log else ax.plot
    draw(grid, np.maximum(rho, floor), color="C0", lw=1.4,
         label=f"SLQ: {ds.sizes['probe']} probes × {ds.sizes['step']} steps, h = {h:.2g}")
    nodes, weights = ds["node"].values.ravel(), ds["weight"].values.ravel()
    heavy = weights > 1e-6 * weights.max()
    top = float(np.max(rho))
    ax.plot(nodes[heavy], np.full(int(heavy.sum()), top * (2.0 if log else 1.1)), "|", ms=10,
            color="C0", alpha=0.5, label="quadrature nodes (weight > 1e-6 of the largest)")
    heading = title or "Spectral density (stochastic Lanczos quadrature)"
    if eigenvalues is not None:
        lam = np.asarray(eigenvalues, dtype=float).ravel()
        z = (grid[:, None] - lam[None, :]) / h
        dense = np.exp(-0.5 * z * z).sum(axis=1) / (lam.size * h * math.sqrt(2 * math.pi))
        draw(grid, np.maximum(dense, floor), color="C3", lw=1.0, ls="--",
             label=f"dense spectrum (N = {lam.size:,}), same kernel")
        w1 = wasserstein_distance(nodes, lam, weights) / (lam.max() - lam.min())
        heading += f"\nW₁(SLQ, dense) / spectral width = {w1:.4f}"
    ax.set_xlabel(f"eigenvalue ({ds['grid'].attrs.get('units', '')})")
    ax.set_ylabel("density")
    if log:
        ax.set_ylim(bottom=max(top * 1e-8, floor))
    ax.set_title(heading, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig
