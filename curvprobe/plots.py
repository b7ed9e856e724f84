"""Figures from curvprobe result Datasets.

Every function takes result ``xarray.Dataset`` objects and returns a
:class:`matplotlib.figure.Figure` built without pyplot on the Agg canvas: no
global backend switch, no window, no ``show``; save it with ``fig.savefig``.
Nothing here computes a measurement — fits shown are recomputed with
:mod:`curvprobe.spectral.fits` from the Dataset's own arrays, exactly as the
measurement did.

Sections (each self-contained; add new ones below, with their own helpers):

- Spectral core (DESIGN §5, §7.7) — from :func:`curvprobe.spectral.layer_spectra`:
  :func:`plot_alpha_fits` (log h vs log σ per layer with the α line),
  :func:`plot_spectral_transfer` (measured s vs αγ across layers),
  :func:`plot_rank_profile_bic` (rank-profile BIC winners),
  :func:`plot_alpha_by_layer_type` (α by layer type).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

__all__ = [
    "plot_alpha_by_layer_type",
    "plot_alpha_fits",
    "plot_rank_profile_bic",
    "plot_spectral_transfer",
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
        return [(str(key), ds) for key, ds in spectra.items()]
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

    Args:
        spectra: a ``layer_spectra`` Dataset.
        layers: subset of ``spectra.layer`` to draw (default all).
        ncols: panels per row.
    """
    from curvprobe.spectral.fits import power_law_fit

    names = list(spectra.layer.values) if layers is None else list(layers)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(3.2 * ncols, 2.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        row = spectra.sel(layer=name)
        sigma, h = row.sigma.values, row.h.values
        used = (np.arange(sigma.size) < int(row.n_fit)) & (h > 0)
        ax.loglog(sigma[used], h[used], "o", ms=4, color="C0", label="h > 0")
        neg = ~used & (h != 0)
        if neg.any():
            ax.loglog(sigma[neg], np.abs(h[neg]), "o", ms=4, mfc="none", color="C3",
                      label="|h|, not fitted")
        alpha = float(row.alpha)
        if used.sum() >= 2 and math.isfinite(alpha):
            fit = power_law_fit(sigma[used], h[used])
            xs = np.array([sigma[used].min(), sigma[used].max()])
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

    Args:
        spectra: one ``layer_spectra`` Dataset, a list of them, or a mapping
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

    Args:
        spectra: one Dataset, a list, or a mapping ``label -> Dataset``; points
            of different datasets get different markers.
        by: coordinate over ``layer`` to group on ("layer_group",
            "layer_kind", "module_type", …).

    Points are jittered horizontally; the bar is the group median. The dashed
    line marks α = 2 (the Kronecker headline with β = 2, φ = 0).
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
