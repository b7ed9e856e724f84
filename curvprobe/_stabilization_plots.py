"""Stabilization figures (DESIGN §7 items 1–6) from result Datasets.

Same conventions as :mod:`curvprobe.plots`: every function takes result
``xarray.Dataset`` objects and returns a :class:`matplotlib.figure.Figure`
built on the Agg canvas without pyplot (no global state, no window); save it
with ``fig.savefig``. Fitted slopes are recomputed with
:func:`curvprobe.theory.empirical_slope` from the Dataset's own arrays.

- :func:`plot_criteria_vs_k` — Δ₁, Δ₂, Δ₂^(D) (and GM) against k, log–log, with fitted slopes (§7.1);
- :func:`plot_subspace_ratio` — Δ₂^(D)/Δ₂ against k per D and σ (§7.2);
- :func:`plot_validity` — quadratic-validity relative error against σ (§7.3);
- :func:`plot_mc_convergence` — direct and quadratic MC against S, with GM (§7.4);
- :func:`plot_gm_agreement` — |direct − GM| / |direct| over D and σ (§7.5);
- :func:`plot_stage_timings` — wall time per stage and per estimator (§7.6);
- :func:`stabilization_figures` — all of those that the given Datasets allow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

__all__ = ["CRITERION_LABELS", "plot_criteria_vs_k", "plot_gm_agreement", "plot_mc_convergence",
           "plot_stage_timings", "plot_subspace_ratio", "plot_validity", "slope_or_none",
           "stabilization_figures"]

CRITERION_LABELS = {
    "delta1": "Δ₁ (Dirac, |δ_k(w*)|)",
    "full_mc": "Δ₂ (full space, MC)",
    "sphere": "sphere (smoothed Δ₁)",
    "direct_mc": "Δ₂^(D) (direct MC)",
    "quad_mc": "quadratic MC",
    "gm": "GM (closed form)",
    "cv_mc": "control-variate MC",
}
_COLORS = {"delta1": "C7", "full_mc": "C0", "sphere": "C5", "direct_mc": "C3", "quad_mc": "C2",
           "gm": "k", "cv_mc": "C1"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _k_axis(ax) -> None:
    """Log k axis with plain major labels (1, 10, 100, 1000) and no minor labels."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def slope_or_none(k: np.ndarray, values: np.ndarray):
    """:func:`empirical_slope` on the positive finite points, or None if < 3 remain."""
    from curvprobe.theory import empirical_slope

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


def plot_criteria_vs_k(ds: xr.Dataset, *, dim: int | None = None,
                       estimators: Sequence[str] = ("delta1", "full_mc", "direct_mc", "gm"),
                       sigmas: Sequence[float] | None = None) -> Figure:
    """Criteria against k on log–log axes, one panel per σ, with fitted slopes (§7.1).

    Args:
        ds: a :func:`curvprobe.stabilization` Dataset.
        dim: D of the subspace criteria (default the largest).
        estimators: which criteria to draw (those present).
        sigmas: panels (default every σ).

    Each legend entry gives the OLS slope of log value on log k with its 95 %
    confidence interval; error bars are ±1 standard error. The dotted line is
    k⁻² through the first Δ₂^(D) point (the rate bound's order).
    """
    dim = int(ds["dim"].values.max()) if dim is None else int(dim)
    sigmas = list(ds["sigma"].values) if sigmas is None else list(sigmas)
    ncols = len(sigmas)
    fig = _figure(4.6 * ncols, 4.0)
    axes = np.atleast_1d(fig.subplots(1, ncols, squeeze=False)).ravel()
    k = ds["k"].values.astype(float)
    for ax, sigma in zip(axes, sigmas):
        for est in estimators:
            if not _has(ds, est):
                continue
            cell = ds.sel(sigma=sigma, dim=dim, estimator=est)
            y, se = cell["value"].values, cell["stderr"].values
            fit = slope_or_none(k, y)
            label = CRITERION_LABELS.get(est, est)
            if est in ("direct_mc", "quad_mc", "gm", "cv_mc"):
                label = label.replace("^(D)", f"^({dim})") + ("" if "^(" in label else f", D={dim}")
            if fit is not None:
                label += f": slope {fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
            ok = np.isfinite(y) & (y > 0)
            style = dict(color=_COLORS.get(est), ms=4, lw=1.2, label=label)
            if est == "gm":
                ax.plot(k[ok], y[ok], "--", **style)
            else:
                ax.errorbar(k[ok], y[ok], yerr=np.where(np.isfinite(se[ok]), se[ok], 0), fmt="o-",
                            capsize=2, **style)
        if _has(ds, "direct_mc"):
            y0 = ds["value"].sel(sigma=sigma, dim=dim, estimator="direct_mc").values
            ok = np.isfinite(y0) & (y0 > 0)
            if ok.any():
                k0, v0 = k[ok][0], y0[ok][0]
                ax.plot(k, v0 * (k / k0) ** -2.0, ":", color="0.5", lw=1, label="k⁻² reference")
        _k_axis(ax)
        ax.set_yscale("log")
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("criterion")
        ax.set_title(_sigma_label(ds, sigma), fontsize=9)
        ax.legend(fontsize=6.5, loc="lower left")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle("Stabilization criteria against k", fontsize=11)
    return fig


def plot_subspace_ratio(ds: xr.Dataset, *, numerator: str = "direct_mc",
                        denominator: str = "full_mc") -> Figure:
    """Δ₂^(D)/Δ₂ against k, one line per (D, σ) (§7.2).

    Colour encodes D, line style and marker encode σ; the grey line is 1.
    """
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    if not (_has(ds, numerator) and _has(ds, denominator)):
        ax.text(0.5, 0.5, f"needs {numerator} and {denominator}", ha="center", transform=ax.transAxes)
        return fig
    k = ds["k"].values.astype(float)
    styles = ["-", "--", ":", "-."]
    markers = "osD^v"
    for si, sigma in enumerate(ds["sigma"].values):
        for di, D in enumerate(ds["dim"].values):
            num = ds["value"].sel(sigma=sigma, dim=D, estimator=numerator).values
            den = ds["value"].sel(sigma=sigma, dim=D, estimator=denominator).values
            ratio = num / den
            ok = np.isfinite(ratio) & (ratio > 0)
            ax.plot(k[ok], ratio[ok], styles[si % 4], marker=markers[si % 5], ms=3.5, color=f"C{di}",
                    label=f"D={int(D)}, {_sigma_label(ds, float(sigma))}")
    ax.axhline(1.0, color="0.5", lw=1)
    _k_axis(ax)
    ax.set_yscale("log")
    ax.set_xlabel("k (samples)")
    ax.set_ylabel(f"{numerator} / {denominator}")
    ax.set_title("Subspace probe vs full space: Δ₂^(D) / Δ₂")
    ax.legend(fontsize=6.5, ncol=1 if ds.sizes["sigma"] * ds.sizes["dim"] <= 6 else 2)
    ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_validity(validity: xr.Dataset) -> Figure:
    """Relative error of the quadratic model against σ (§7.3).

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


def plot_mc_convergence(conv: xr.Dataset, *, sigmas: Sequence[float] | None = None) -> Figure:
    """Direct MC and quadratic MC against the number of draws S, with GM (§7.4).

    One panel per (σ, D); running means over nested prefixes of the same draws
    with ±1 standard error.
    """
    sigmas = list(conv["sigma"].values) if sigmas is None else list(sigmas)
    dims = list(conv["dim"].values)
    fig = _figure(3.4 * len(dims), 3.0 * len(sigmas))
    axes = fig.subplots(len(sigmas), len(dims), squeeze=False)
    S = conv["S"].values
    for r, sigma in enumerate(sigmas):
        for c, D in enumerate(dims):
            ax = axes[r, c]
            cell = conv.sel(sigma=sigma, dim=D)
            for j, est in enumerate(("direct_mc", "quad_mc")):
                y = cell["value"].sel(estimator=est).values
                se = cell["stderr"].sel(estimator=est).values
                ax.errorbar(S * (1 + 0.04 * (j - 0.5)), y, yerr=se, fmt="o-", ms=3.5, capsize=2,
                            color=_COLORS[est], label=CRITERION_LABELS[est])
            gm = float(cell["value"].sel(estimator="gm").values[-1])
            ax.axhline(gm, color="k", ls="--", lw=1, label="GM")
            ax.set_xscale("log", base=2)
            ax.set_title(f"σ = {float(sigma):.3g}, D = {int(D)}", fontsize=8.5)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            if r == len(sigmas) - 1:
                ax.set_xlabel("Monte Carlo draws S")
            if c == 0:
                ax.set_ylabel("estimate of Δ₂^(D)")
    axes[0, 0].legend(fontsize=6.5)
    fig.suptitle(f"Monte Carlo convergence to GM at k = {conv.attrs.get('k', '?')}", fontsize=11)
    return fig


def gm_relative_gap(ds: xr.Dataset) -> xr.DataArray:
    """``|direct_mc − gm| / |direct_mc|`` over (k, sigma, dim)."""
    direct = ds["value"].sel(estimator="direct_mc")
    gm = ds["value"].sel(estimator="gm")
    return abs(direct - gm) / abs(direct)


def plot_gm_agreement(ds: xr.Dataset, *, k: int | None = None) -> Figure:
    """Heat map of |Direct − GM| / |Direct| over D and σ (§7.5).

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
        ax.set_xlabel("σ  (* beyond the validated regime)")
        ax.set_ylabel("D")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, label="log₁₀ |Direct − GM| / |Direct|")
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


def plot_stage_timings(ds: xr.Dataset, *, convergence: xr.Dataset | None = None,
                       extra: Mapping[str, float] | None = None) -> Figure:
    """Wall time per stage, and per-estimator evaluation cost (§7.6).

    Left: ``ds.stage_seconds`` (plus ``extra`` stages such as the validity
    sweep), log scale. Right (if ``convergence`` is given): seconds to evaluate
    each estimator for one (σ, D) at S draws — median over σ and D — with the
    direct-MC / GM ratio (the paper's stage-III speed-up).
    """
    ncols = 2 if convergence is not None else 1
    fig = _figure(5.5 * ncols, 4.0)
    axes = np.atleast_1d(fig.subplots(1, ncols, squeeze=False)).ravel()
    stages = {}
    if "stage_seconds" in ds:
        stages = {_STAGE_LABELS.get(str(s), str(s)): float(v)
                  for s, v in zip(ds["stage"].values, ds["stage_seconds"].values)}
    stages.update(extra or {})
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
    ax.set_title("Stage timings", fontsize=10)
    ax.set_xlim(values.min() / 3, values.max() * 20)
    if convergence is not None:
        ax = axes[1]
        ests = [str(e) for e in convergence["estimator"].values]
        sec = convergence["eval_seconds"].median(("sigma", "dim"))
        vals = np.maximum(np.array([float(sec.sel(estimator=e)) for e in ests]), 1e-9)
        ax.bar(range(len(ests)), vals, color=[_COLORS.get(e, "C0") for e in ests])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2g} s", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(ests)), ests)
        ax.set_yscale("log")
        ax.set_ylabel("seconds per (σ, D)")
        speedup = float(sec.sel(estimator="direct_mc") / sec.sel(estimator="gm"))
        ax.set_title(f"Stage III at k = {convergence.attrs.get('k', '?')}, S = "
                     f"{convergence.attrs.get('max_samples', '?')}: GM ≈ {speedup:,.0f}× faster "
                     "than direct MC", fontsize=9)
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
        figures["stage_timings"] = plot_stage_timings(ds, convergence=convergence, extra=extra_timings)
    if validity is not None:
        figures["validity"] = plot_validity(validity)
    if convergence is not None:
        figures["mc_convergence"] = plot_mc_convergence(convergence)
    return figures
