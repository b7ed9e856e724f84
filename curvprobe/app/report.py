"""The key table of a stabilization run as Markdown (``summary.md`` and the terminal).

:func:`summary_markdown` reads result Datasets only: the fitted slope of each
criterion in k with its confidence interval (:func:`curvprobe.criteria.theory.empirical_slope`),
Δ₂^(D)/Δ₂ at the largest k per D and σ, the curvature part Δ₂ − Δ₁² and the
fraction of it the subspace captures, GM against direct Monte Carlo, stage
timings and the eigensolver certificates. A result over several orderings is
read through its ordering averages (:func:`curvprobe.criteria.decomposition.estimates`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from curvprobe.app.plots import slope_or_none
from curvprobe.criteria.decomposition import estimates
from curvprobe.criteria.spec import ESTIMATORS, SUBSPACE

__all__ = ["curriculum_markdown", "curvature_table", "hessian_markdown", "kronecker_table",
           "summary_markdown", "table"]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with columns padded for the terminal (a ``|`` inside a
    cell, as in ``|direct−GM|``, is escaped)."""
    cells = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def kronecker_table(kron: xr.Dataset) -> str:
    """Per layer of a ``kronecker_alignment`` Dataset: α, β, φ, the predictions
    β + φ and 2 + φ of α, R² of the α fit and the median χ (undefined: ``–``)."""
    columns = ("alpha", "beta", "phi", "alpha_pred_beta_phi", "alpha_pred_2_phi", "r2_alpha", "chi_median")
    rows = [[str(name)] + [_fmt(float(kron[var].sel(layer=name))) for var in columns]
            for name in kron["layer"].values]
    return table(["layer", "α", "β", "φ", "β + φ", "2 + φ", "R²(α)", "median χ"], rows)


def _has(ds: xr.Dataset, est: str) -> bool:
    return est in ds["estimator"].values


def _sigma_head(ds: xr.Dataset) -> list[str]:
    outside = {}
    if "outside_validated_regime" in ds:
        outside = dict(zip(ds["sigma"].values.tolist(), ds["outside_validated_regime"].values.tolist()))
    return [f"σ={s:.3g}{' (beyond)' if outside.get(s) else ''}" for s in ds["sigma"].values.tolist()]


def slope_table(ds: xr.Dataset) -> str:
    """Fitted slope of log criterion on log k, ``slope [95 % CI]``, rows criterion@D, columns σ."""
    k = ds["k"].values.astype(float)
    dims = [int(d) for d in ds["dim"].values]
    value, _ = estimates(ds)
    rows = []
    order = [("delta1", [dims[-1]]), ("full_mc", [dims[-1]]), ("gm_full", [dims[-1]]), ("sphere", [dims[-1]]),
             ("direct_mc", dims), ("gm", dims), ("cv_mc", [dims[-1]]), ("quad_mc", [dims[-1]])]
    for est, ds_dims in order:
        if not _has(ds, est):
            continue
        for D in ds_dims:
            entry = ESTIMATORS[est]
            name = entry.label + (f", D={D}" if entry.space == SUBSPACE else "")
            cells = []
            for s in ds["sigma"].values:
                fit = slope_or_none(k, value.sel(estimator=est, sigma=s, dim=D).values)
                cells.append("–" if fit is None else
                             f"{fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]")
            if est == "delta1":
                cells = [cells[0]] + ["(same)"] * (len(cells) - 1)
            rows.append([name, *cells])
    return table(["criterion", *_sigma_head(ds)], rows)


def ratio_table(ds: xr.Dataset, k: int | None = None) -> str:
    """Δ₂^(D)/Δ₂ (direct_mc / full_mc) at k (default the largest), rows D, columns σ."""
    k = int(ds["k"].values.max()) if k is None else k
    value, _ = estimates(ds)
    rows = []
    for D in ds["dim"].values:
        cells = []
        for s in ds["sigma"].values:
            num = float(value.sel(k=k, sigma=s, dim=D, estimator="direct_mc"))
            den = float(value.sel(k=k, sigma=s, dim=D, estimator="full_mc"))
            cells.append(_fmt(num / den if den else math.nan))
        rows.append([f"D={int(D)}", *cells])
    return table([f"Δ₂^(D)/Δ₂ at k={k}", *_sigma_head(ds)], rows)


def gm_table(ds: xr.Dataset, k: int | None = None) -> str:
    """|direct − GM|/|direct| at k with the gap in direct-MC standard errors."""
    k = int(ds["k"].values.max()) if k is None else k
    value, stderr = estimates(ds)
    rows = []
    for D in ds["dim"].values:
        cells = []
        for s in ds["sigma"].values:
            direct = float(value.sel(k=k, sigma=s, dim=D, estimator="direct_mc"))
            se = float(stderr.sel(k=k, sigma=s, dim=D, estimator="direct_mc"))
            gm = float(value.sel(k=k, sigma=s, dim=D, estimator="gm"))
            rel = abs(direct - gm) / abs(direct) if direct else math.nan
            z = abs(direct - gm) / se if se > 0 else math.nan
            cells.append(f"{_fmt(rel, 2)} ({_fmt(z, 2)} se)")
        rows.append([f"D={int(D)}", *cells])
    return table([f"|direct−GM|/|direct| at k={k}", *_sigma_head(ds)], rows)


def _fraction_estimator(ds: xr.Dataset) -> str | None:
    """The subspace estimator whose captured fraction a table or figure shows: the true
    criterion (cv_mc, else direct_mc) before the surrogate (gm, quad_mc)."""
    for name in ("cv_mc", "direct_mc", "gm", "quad_mc"):
        if _has(ds, name) and "captured_fraction" in ds:
            return name
    return None


def _pm(x: float, se: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}g} ± {_fmt(se, 1)}"


def curvature_table(ds: xr.Dataset, k: int | None = None) -> str:
    """The curvature part at k (default the largest), columns σ.

    Rows: Δ₁²/Δ₂ (the pointwise share of the full-space criterion), the
    full-space curvature part Δ₂ − Δ₁² ± se, and per D the captured fraction
    (Δ₂^(D) − Δ₁²)/(Δ₂ − Δ₁²) ± se of the true subspace criterion (cv_mc or
    direct_mc; gm when neither ran). A σ where Δ₂ − Δ₁² is within two
    standard errors of 0 is marked "(unresolved)": its fraction is noise.
    """
    k = int(ds["k"].values.max()) if k is None else k
    name = _fraction_estimator(ds)
    cell: dict[str, Any] = {"k": k, "estimator": "full_mc"}
    rows = [["Δ₁²/Δ₂", *[_fmt(float(ds["delta1_share"].sel(k=k, sigma=s)), 3) for s in ds["sigma"].values]]]
    full = []
    for s in ds["sigma"].values:
        resolved = bool(ds["curvature_resolved"].sel(k=k, sigma=s))
        part = float(ds["curvature_part"].sel(sigma=s, **cell).isel(dim=0))
        se = float(ds["curvature_part_stderr"].sel(sigma=s, **cell).isel(dim=0))
        full.append(f"{part:.3g} ± {se:.2g}" + ("" if resolved else " (unresolved)"))
    rows.append(["Δ₂ − Δ₁² (full space)", *full])
    if name is not None:
        label = ESTIMATORS[name].label
        for D in ds["dim"].values:
            cells = [_pm(float(ds["captured_fraction"].sel(k=k, sigma=s, dim=D, estimator=name)),
                         float(ds["captured_fraction_stderr"].sel(k=k, sigma=s, dim=D, estimator=name)))
                     for s in ds["sigma"].values]
            rows.append([f"captured fraction, D={int(D)} ({label})", *cells])
    return table([f"curvature part at k={k}", *_sigma_head(ds)], rows)


def convergence_table(conv: xr.Dataset) -> str:
    """At S_max: direct MC ± se, quadratic MC ± se, GM, per (σ, D)."""
    S = int(conv["S"].values.max())
    rows = []
    for s in conv["sigma"].values:
        for D in conv["dim"].values:
            c = conv.sel(S=S, sigma=s, dim=D)
            v = lambda e, c=c: float(c["value"].sel(estimator=e))  # noqa: E731
            se = lambda e, c=c: float(c["stderr"].sel(estimator=e))  # noqa: E731
            rel = abs(v("direct_mc") - v("gm")) / abs(v("direct_mc"))
            rows.append([f"{s:.3g}", int(D), f"{v('direct_mc'):.3e} ± {se('direct_mc'):.1e}",
                         f"{v('quad_mc'):.3e} ± {se('quad_mc'):.1e}", f"{v('gm'):.3e}",
                         f"{v('cv_mc'):.3e} ± {se('cv_mc'):.1e}", _fmt(rel, 2)])
    return table(["σ", "D", f"direct MC (S={S})", "quad MC", "GM", "CV MC", "|direct−GM|/|direct|"],
                 rows)


def timing_table(ds: xr.Dataset, extra: Mapping[str, float] | None = None,
                 convergence: xr.Dataset | None = None) -> str:
    rows = [[str(s), f"{float(v):.2f}"] for s, v in zip(ds["stage"].values, ds["stage_seconds"].values)]
    rows += [[name, f"{sec:.2f}"] for name, sec in (extra or {}).items()]
    text = table(["stage", "seconds"], rows)
    if convergence is not None:
        sec = convergence["eval_seconds"].median(("sigma", "dim"))
        per = {str(e): float(sec.sel(estimator=e)) for e in convergence["estimator"].values}
        text += ("\n\nStage III, one (σ, D) at k = {k}, S = {S} (median over σ, D): direct MC {d:.3g} s, "
                 "quadratic MC {q:.2g} s, GM {g:.2g} s — GM ≈ {r:,.0f}× faster than direct MC."
                 ).format(k=convergence.attrs.get("k"), S=convergence.attrs.get("max_samples"),
                          d=per["direct_mc"], q=per["quad_mc"], g=per["gm"],
                          r=per["direct_mc"] / per["gm"])
    return text


def _eigen_ks(ds: xr.Dataset) -> np.ndarray:
    """The k whose eigenspace was solved (one for a fixed or pooled subspace)."""
    ks = ds["k"].values
    if ds.attrs.get("subspace") in ("fixed", "pooled"):  # one eigenspace serves every k
        ks = ks[int(np.argmax(ds["hvps"].values)):][:1]
    return ks


def _converged(ds: xr.Dataset, k: int) -> np.ndarray:
    """Per pair at ``k``: the residual test ``residual ≤ tol`` (the ``converged``
    variable of a result from before it meant that, recomputed)."""
    tol = ds.attrs.get("tol")
    res = ds["residuals"].sel(k=k).values
    return res <= tol if tol is not None else ds["converged"].sel(k=k).values


def certificate_cell(ds: xr.Dataset, k: int) -> str:
    """``"yes (≤ β)"``, ``"no (p > β)"`` or ``"no bound"``: the eigenspace at ``k``
    against the stated miss bound ``β`` (the ``miss_bound`` attr)."""
    bound = float(ds.attrs.get("miss_bound", math.nan))
    if not math.isfinite(bound):
        return "no bound"
    if "certified" in ds and bool(ds["certified"].sel(k=k)):
        return f"yes (≤ {bound:g})"
    miss = float(ds["miss_probability"].sel(k=k)) if "miss_probability" in ds else math.nan
    return f"no ({_fmt(miss, 2)} > {bound:g})" if math.isfinite(miss) and miss > bound else "no"


def certificate_line(ds: xr.Dataset) -> str:
    """One sentence: how many pairs converged (residual ≤ tol) and whether the
    eigenspace is certified at the stated miss bound — "certified" only then."""
    ks = _eigen_ks(ds)
    conv = np.stack([_converged(ds, k) for k in ks])
    per = f"{int(conv[0].sum())}/{conv.shape[1]}" if len(ks) == 1 else (
        f"{int(conv.sum())}/{conv.size} pairs over {len(ks)} k")
    miss = (np.array([float(ds["miss_probability"].sel(k=k)) for k in ks]) if "miss_probability" in ds
            else np.full(len(ks), math.nan))
    worst = _fmt(float(np.nanmax(miss)) if np.isfinite(miss).any() else math.nan, 2)
    bound = float(ds.attrs.get("miss_bound", math.nan))
    if not math.isfinite(bound):
        return (f"converged {per}; miss probability {worst} — not certified (no miss bound stated: "
                "set miss_bound)")
    certified = "certified" in ds and all(bool(ds["certified"].sel(k=k)) for k in ks)
    if certified:
        return f"converged {per}; certified at miss probability ≤ {bound:g} (the miss bound; reached {worst})"
    if bool(conv.all()) and np.isfinite(miss).all() and float(miss.max()) > bound:
        return f"converged {per}; not certified: miss probability {worst} > {bound:g} (the miss bound)"
    return (f"converged {per}; not certified at miss probability ≤ {bound:g} (the miss bound): a pair "
            "did not converge or the guard found a miss it could not repair")


def eigen_table(ds: xr.Dataset) -> str:
    """Per solved k: HVPs, the largest residual, pairs converged, the miss
    probability, the certificate at the stated bound and θ₁, θ_D."""
    rows = []
    for k in _eigen_ks(ds):
        res = ds["residuals"].sel(k=k).values
        conv = _converged(ds, k)
        ev = ds["eigenvalues"].sel(k=k).values
        K = int(ds["k"].max())
        label = {"fixed": f"{K} (fixed: all k)", "pooled": f"{K}+1 samples (pooled: all k)"}.get(
            str(ds.attrs.get("subspace")), int(k))
        miss = float(ds["miss_probability"].sel(k=k)) if "miss_probability" in ds else math.nan
        rows.append([label, int(ds["hvps"].sel(k=k)), _fmt(float(np.nanmax(res)), 2),
                     f"{int(conv.sum())}/{conv.size}", _fmt(miss, 2), certificate_cell(ds, k),
                     _fmt(float(ev[0]), 4), _fmt(float(ev[-1]), 4)])
    return table(["k", "HVPs", "max residual", "converged", "miss probability", "certified", "θ₁",
                  f"θ_{ds.sizes['rank']}"], rows)


def summary_markdown(ds: xr.Dataset, *, validity: xr.Dataset | None = None,
                     convergence: xr.Dataset | None = None, extra_timings: Mapping[str, float] | None = None,
                     title: str = "curvprobe stabilization summary", notes: Sequence[str] = ()) -> str:
    """The key table of a run, as Markdown."""
    a = ds.attrs
    ks = ds["k"].values
    lines = [f"# {title}", ""]
    lines.append(f"- model: {a.get('model_source', a.get('model', '?'))} ({a.get('model', '?')}, "
                 f"N = {a.get('num_params', '?')} parameters, {a.get('dtype', '?')}, {a.get('device', '?')})")
    lines.append(f"- k grid: {len(ks)} values from {int(ks.min())} to {int(ks.max())}; "
                 f"D ∈ {{{', '.join(str(int(d)) for d in ds['dim'].values)}}}; "
                 f"σ ∈ {{{', '.join(f'{s:.3g}' for s in ds['sigma'].values)}}}; "
                 f"S = {a.get('mc_samples', a.get('num_samples', '?'))} Monte Carlo draws; "
                 f"seed {a.get('seed', '?')}")
    lines.append(f"- subspace: {a.get('subspace_note', a.get('subspace', '?'))}")
    if "ordering" in ds.dims:
        lines.append(f"- orderings: {ds.sizes['ordering']} orderings of the first {int(ks.max()) + 1} "
                     "samples (ordering 0 the given order); every value below is the average over "
                     "orderings and its standard error combines their spread with the Monte Carlo error "
                     "(docs/estimators.md)")
    regime = a.get("validated_sigma_max")
    if regime is not None:
        lines.append(f"- validated quadratic regime: σ ≤ {_fmt(float(regime))} (mean relative error ≤ "
                     f"{a.get('validity_threshold', '?')}); σ marked (beyond) lie outside it and their "
                     "gm/quad_mc values are proxies, not the criterion")
    lines += [f"- {note}" for note in notes]
    lines += ["", "## Fitted slope of each criterion in k (log–log OLS, 95 % CI)", "", slope_table(ds)]
    if _has(ds, "direct_mc") and _has(ds, "full_mc"):
        lines += ["", "## Subspace vs full space at the largest k", "", ratio_table(ds)]
    if "curvature_part" in ds and "delta1_share" in ds:
        lines += ["", "## Curvature part Δ₂ − Δ₁² and the fraction the subspace captures (largest k)", "",
                  curvature_table(ds)]
    if _has(ds, "direct_mc") and _has(ds, "gm"):
        lines += ["", "## GM vs direct Monte Carlo at the largest k", "", gm_table(ds)]
    if convergence is not None:
        lines += ["", f"## Monte Carlo convergence at k = {convergence.attrs.get('k')}", "",
                  convergence_table(convergence)]
    if validity is not None:
        rows = [[f"{s:.3g}", _fmt(float(m), 3), _fmt(float(sd), 3), "yes" if v else "no"]
                for s, m, sd, v in zip(validity["sigma"].values, validity["rel_error_mean"].values,
                                       validity["rel_error_std"].values, validity["valid"].values)]
        lines += ["", f"## Quadratic validity at k = {validity.attrs.get('k')}", "",
                  table(["σ", "mean rel. error", "std", "validated"], rows)]
    lines += ["", "## Stage timings", "", timing_table(ds, extra_timings, convergence)]
    if ds["hvps"].values.sum() > 0:
        lines += ["", "## Eigensolver certificates (top-D of H^(k), relative residuals ‖Hu−θu‖/|θ₁|)", "",
                  certificate_line(ds), "", eigen_table(ds)]
    return "\n".join(lines) + "\n"


def curriculum_markdown(ds: xr.Dataset, *, notes: Sequence[str] = (),
                        title: str = "curvprobe curriculum protocol") -> str:
    """The table of a curriculum run (:func:`curvprobe.criteria.protocol.merge_seeds`).

    Per k: the training step and samples seen, the validation loss and each
    criterion at the first σ and the largest D as mean ± std across seeds;
    then the fitted slope of each criterion's seed mean on log k.
    """
    seeds = [int(s) for s in ds["seed"].values]
    sigma, D = float(ds["sigma"].values[0]), int(ds["dim"].values.max())
    names = [str(e) for e in ds["estimator"].values]
    head = ["k", "step", "seen", "validation loss"] + [ESTIMATORS[n].label for n in names]
    rows = []
    for k in ds["k"].values:
        row: list[object] = [int(k), int(ds["step"].sel(k=k).isel(seed=0)),
                             int(ds["seen"].sel(k=k).isel(seed=0)),
                             _pm(float(ds["validation_loss_mean"].sel(k=k)),
                                 float(ds["validation_loss_std"].sel(k=k)), 4)]
        for n in names:
            cell = {"k": k, "sigma": sigma, "dim": D, "estimator": n}
            row.append(f"{float(ds['seed_mean'].sel(cell)):.3g} ± {_fmt(float(ds['seed_std'].sel(cell)), 2)}")
        rows.append(row)
    kk = ds["k"].values.astype(float)
    slopes = []
    for n in names:
        fit = slope_or_none(kk, ds["seed_mean"].sel(sigma=sigma, dim=D, estimator=n).values)
        slopes.append([ESTIMATORS[n].label, "–" if fit is None else
                       f"{fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"])
    settings = ds.attrs.get("curriculum_settings", {})
    lines = [f"# {title}", "",
             (f"- model: {settings.get('model', '?')} trained from initialisation, seeds {seeds}; "
              f"{ds.attrs.get('training', '')}"),
             f"- protocol: {ds.attrs.get('protocol', '')}",
             (f"- σ = {sigma:g}, D = {D}; S = {ds.attrs.get('mc_samples', '?')} Monte Carlo draws; values "
              "are mean ± standard deviation across seeds"),
             *[f"- {note}" for note in notes], "",
             "## Criteria along training", "", table(head, rows), "",
             "## Fitted slope of the seed mean in k (log–log OLS, 95 % CI)", "",
             table(["criterion", f"σ={sigma:.3g}"], slopes)]
    return "\n".join(lines) + "\n"


def _hessian_tolerances(ds: xr.Dataset) -> str:
    """The residual tolerance of each part and what it is relative to."""
    attrs = ds.attrs
    text = (f"- residual tolerances: top {attrs.get('tol')} of |θ_1| = {_fmt(attrs.get('top_scale'), 4)}; "
            f"bottom {attrs.get('bottom_tol', attrs.get('tol'))} of s = {_fmt(attrs.get('bottom_scale'), 4)} "
            "(the largest |θ| its solve saw, ≤ ‖H‖)")
    if "layer_eigenvalue" in ds:
        text += f"; layers {attrs.get('layer_tol', attrs.get('tol'))} of each block's |θ_1|"
    return text


def _hessian_convergence(ds: xr.Dataset) -> str:
    """One line: every eigenpair converged (with each end's miss probability; "certified"
    only at a stated miss bound, and the report states none), or which parts have pairs that did not."""
    missed = {part: n for part, n in ds.attrs.get("not_converged", {}).items() if n}
    if not missed:
        ends = ", ".join(f"{end} {_fmt(ds.attrs.get(f'{end}_miss_probability'), 2)}"
                         for end in ("top", "bottom"))
        return ("- every eigenpair converged (residual within its tolerance, guard passed); probability that "
                f"an eigenvalue beyond an end was missed: {ends} — not certified at a stated miss bound")
    parts = ", ".join(f"{part} {n}" for part, n in missed.items())
    return (f"- **NOT CONVERGED**: {parts} eigenpair(s) missed their tolerance or guard within the "
            "solver's budget (rows marked 'no'); a smaller --bottom/--layer-top or a looser "
            "--bottom-tol/--layer-tol converges sooner")


def hessian_markdown(ds: xr.Dataset, *, title: str = "curvprobe Hessian report",
                     notes: Sequence[str] = ()) -> str:
    """The Markdown summary of a :func:`curvprobe.spectral.hessian.hessian_report` Dataset."""
    model = (f"- model: {ds.attrs.get('model', '?')} (N = {ds.attrs.get('num_params')}, k = "
             f"{ds.attrs.get('k')} samples, {ds.attrs.get('dtype')})")
    lines = [f"# {title}", "", model, _hessian_tolerances(ds), _hessian_convergence(ds),
             *[f"- {note}" for note in notes], ""]
    for end, dim in (("top", "rank"), ("bottom", "bottom_rank")):
        rows = [[int(r), _fmt(float(v), 6), _fmt(float(res), 2), "yes" if c else "no"]
                for r, v, res, c in zip(ds[dim].values, ds[f"{end}_eigenvalue"].values,
                                        ds[f"{end}_residual"].values, ds[f"{end}_converged"].values)]
        bound = _fmt(ds.attrs.get(f"{end}_miss_probability"), 2)
        lines += [f"## {end.capitalize()} eigenvalues (miss probability {bound})", "",
                  table(["rank", "eigenvalue", "rel. residual", "converged"], rows), ""]
    products = ds.attrs.get("products", {})
    trace = (f"tr H = {_fmt(float(ds['trace']), 6)} ± {_fmt(float(ds['trace_stderr']), 2)} (Hutch++, "
             f"{products.get('trace', '?')} products, ± one standard error); ")
    density = (f"SLQ density over {ds.sizes['probe']} probes × {ds.sizes['step']} steps, bandwidth "
               f"{_fmt(ds.attrs.get('density_bandwidth'), 3)}.")
    lines += ["## Trace and density", "", trace + density, ""]
    if "layer_eigenvalue" in ds:
        rows = [[str(layer), *(_fmt(float(v), 4) for v in ds["layer_eigenvalue"].sel(layer=layer).values),
                 f"{int(ds['layer_converged'].sel(layer=layer).sum())}/{ds.sizes['layer_rank']}"]
                for layer in ds["layer"].values]
        head = ["layer", *(f"λ{int(r)}" for r in ds["layer_rank"].values), "converged"]
        lines += ["## Per-layer top eigenvalues", "", table(head, rows), ""]
    timing, cpu = ds.attrs.get("seconds", {}), ds.attrs.get("cpu_seconds", {})
    if timing:
        rows = [[part, products.get(part, "–"), _fmt(sec, 3), _fmt(cpu.get(part), 3)]
                for part, sec in timing.items()]
        lines += ["## Cost", "", table(["part", "products", "wall s", "CPU s"], rows), ""]
    return "\n".join(lines)
