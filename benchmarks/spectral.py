"""Layer spectra and Kronecker alignment on the built-in models (``docs/spectral.md``).

One run prints markdown tables:

1. tiny-gpt: wall time of ``layer_spectra`` over all Linear layers, and the cost
   of the K directional curvatures per layer by four exact paths — batched
   (one HVP call with K columns) or one HVP per direction, each through
   ``Problem.hvp`` on N-vectors ("full") or through the layer-block HVP
   ("block", the default) — with the HVP count per layer and the agreement of h
   between paths. Each time is the minimum over interleaved repeats of the
   process CPU time (``time.process_time``: all torch threads of this process),
   which a shared machine distorts far less than wall time; the wall-time
   totals and the load average are printed too.
2. per layer, for tiny-gpt, the MLP and the CNN: α (R²), γ, s, αγ, BIC winner,
   PR_h, and from ``kronecker_alignment``: β, φ, β + φ, 2 + φ, slope(log χ).
3. α by layer type (attention, MLP, head of the transformer; the MLP model's
   layers; the CNN's conv and head layers).

The MLP and CNN have layers of rank 3–16, so each layer is run with
K = min(top_k, min(m, n)) and the per-layer Datasets are concatenated.

    python benchmarks/spectral.py [--samples 64] [--small-samples 512] [--top-k 20]
                                  [--repeats 2] [--dtype float64] [--save DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from curvprobe import Problem, results
from curvprobe.app import plots
from curvprobe.spectral import (
    directional_curvature,
    gradient_svd,
    kronecker_alignment,
    layer_spectra,
    select_layers,
)
from curvprobe.zoo.builtin import builtin_problem

PATHS = (("block", None), ("block", 1), ("full", None), ("full", 1))


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def curvature_timings(problem: Problem, top_k: int, repeats: int) -> list[dict]:
    """Per layer: best wall time of each path over interleaved repeats, and h agreement."""
    gradient = problem.gradient()
    rows = []
    for layer in select_layers(problem):
        _, U, Vh, _ = gradient_svd(layer, gradient, top_k, precision=problem.dtype)
        best = {path: float("inf") for path in PATHS}
        wall = {path: float("inf") for path in PATHS}
        h, calls = {}, {}
        for _ in range(repeats):
            for method, per_call in PATHS:
                t0, c0 = time.perf_counter(), time.process_time()
                h[method, per_call], calls[method, per_call] = directional_curvature(
                    problem, layer, U, Vh, method=method, directions_per_call=per_call)
                best[method, per_call] = min(best[method, per_call], time.process_time() - c0)
                wall[method, per_call] = min(wall[method, per_call], time.perf_counter() - t0)
        ref = h["full", 1]
        rows.append({
            "layer": layer.name, "group": layer.group, "shape": layer.matrix_shape,
            "hvps": top_k, "calls": {path: calls[path] for path in PATHS}, "seconds": best, "wall": wall,
            "max_rel_diff": max(float((h[p] - ref).abs().max() / ref.abs().max()) for p in PATHS),
        })
    return rows


def per_layer(fn, problem: Problem, top_k: int, **kwargs) -> xr.Dataset:
    """``fn`` layer by layer with K = min(top_k, rank), concatenated over ``layer``."""
    parts = [fn(problem, layers=layer.name, top_k=min(top_k, layer.max_rank), **kwargs)
             for layer in select_layers(problem)]
    return xr.concat(parts, dim="layer", join="outer", combine_attrs="drop_conflicts",
                     data_vars="all", coords="different", compat="equals")


def fmt(x: float, digits: int = 2) -> str:
    return "NaN" if not np.isfinite(x) else f"{x:.{digits}f}"


def print_timings(rows: list[dict], spectra_seconds: tuple[float, float], problem: Problem,
                  top_k: int) -> None:
    print(f"\n## tiny-gpt: directional curvatures, K = {top_k} per layer "
          f"(N = {problem.num_params:,}, {problem.num_samples} sequences, {problem.dtype})\n")
    print(f"`layer_spectra` over all {len(rows)} layers (default: block, batched): "
          f"{spectra_seconds[0]:.2f} s wall, {spectra_seconds[1]:.2f} s CPU, {top_k * len(rows)} HVPs, "
          f"{len(rows)} HVP calls, plus one gradient.\n")
    print("CPU seconds (min over repeats). Batched = one HVP call with K columns; "
          "1-by-1 = K calls of one column.\n")
    print("| layer | m×n | HVPs | block batched s | block 1-by-1 s | full batched s | full 1-by-1 s "
          "| batching gain (full) | batching gain (block) | full 1-by-1 / block batched | max rel Δh |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["seconds"]
        print(f"| {r['layer']} | {r['shape'][0]}×{r['shape'][1]} | {r['hvps']} "
              f"| {s['block', None]:.3f} | {s['block', 1]:.3f} | {s['full', None]:.3f} | {s['full', 1]:.3f} "
              f"| {s['full', 1] / s['full', None]:.2f}× | {s['block', 1] / s['block', None]:.2f}× "
              f"| {s['full', 1] / s['block', None]:.1f}× | {r['max_rel_diff']:.1e} |")
    tot = {p: sum(r["seconds"][p] for r in rows) for p in PATHS}
    print(f"| **total** | | {sum(r['hvps'] for r in rows)} | {tot['block', None]:.2f} "
          f"| {tot['block', 1]:.2f} | {tot['full', None]:.2f} | {tot['full', 1]:.2f} "
          f"| {tot['full', 1] / tot['full', None]:.2f}× | {tot['block', 1] / tot['block', None]:.2f}× "
          f"| {tot['full', 1] / tot['block', None]:.1f}× | |")
    wt = {p: sum(r["wall"][p] for r in rows) for p in PATHS}
    print(f"\nWall-time totals (min over repeats): block batched {wt['block', None]:.2f} s, "
          f"block 1-by-1 {wt['block', 1]:.2f} s, full batched {wt['full', None]:.2f} s, "
          f"full 1-by-1 {wt['full', 1]:.2f} s.")


def layer_rows(label: str, spectra: xr.Dataset, kron: xr.Dataset) -> list[dict]:
    rows = []
    for name in spectra.layer.values:
        s, k = spectra.sel(layer=name), kron.sel(layer=name)
        K = int(np.isfinite(s.singular_value.values).sum())
        rows.append({
            "model": label, "layer": str(name), "group": str(s.layer_group.values),
            "shape": f"{int(s.matrix_rows)}×{int(s.matrix_cols)}", "K": K,
            "rank": int(s.numerical_rank), "alpha": float(s.alpha), "r2": float(s.r2_alpha),
            "gamma": float(s.gamma), "s": float(s.s_hessian), "pred": float(s.predicted_s),
            "rel": float(s.triangle_relative_error), "bic": str(s.best_model_bic.values) or "—",
            "pr_h": float(s.pr_h), "beta": float(k.beta), "phi": float(k.phi),
            "beta_phi": float(k.alpha_pred_beta_phi), "two_phi": float(k.alpha_pred_2_phi),
            "chi_slope": float(k.chi_slope), "hook": float(k.hook_gradient_error),
            "hvps": int(s.num_hvps), "reason": str(s.fit_reason.values),
        })
    return rows


def print_layers(rows: list[dict]) -> None:
    print("\n## Per layer: alpha triangle and Kronecker decomposition\n")
    print("| model | layer | type | m×n | K | rank(G) | HVPs | α (R²) | γ | s | αγ | \\|s−αγ\\|/s "
          "| BIC winner | PR_h | β | φ | β+φ | 2+φ | slope log χ | hook ‖δᵀA/k−G‖/‖G‖ |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['layer']} | {r['group']} | {r['shape']} | {r['K']} | {r['rank']} "
              f"| {r['hvps']} | {fmt(r['alpha'])} ({fmt(r['r2'])}) | {fmt(r['gamma'])} | {fmt(r['s'])} "
              f"| {fmt(r['pred'])} | {fmt(r['rel'])} | {r['bic']} | {fmt(r['pr_h'])} | {fmt(r['beta'])} "
              f"| {fmt(r['phi'])} | {fmt(r['beta_phi'])} | {fmt(r['two_phi'])} | {fmt(r['chi_slope'])} "
              f"| {r['hook']:.0e} |")
    reasons = [(r["model"], r["layer"], r["reason"]) for r in rows if r["reason"]]
    if reasons:
        print("\nNaN reasons:")
        for model, layer, reason in reasons:
            print(f"- {model} {layer}: {reason}")


def print_by_type(rows: list[dict]) -> None:
    print("\n## α by layer type\n")
    print("| model | layer type | layers | fitted | median α | α range | median R²(α) "
          "| median β+φ | median 2+φ | median \\|s−αγ\\|/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    keys = []
    for r in rows:
        if (r["model"], r["group"]) not in keys:
            keys.append((r["model"], r["group"]))
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    for model, group in keys:
        sel = [r for r in rows if r["model"] == model and r["group"] == group]
        fit = [r for r in sel if np.isfinite(r["alpha"])]
        alphas = [r["alpha"] for r in fit]
        rng = f"{min(alphas):.2f} … {max(alphas):.2f}" if alphas else "—"
        bp = [r["beta_phi"] for r in fit if np.isfinite(r["beta_phi"])]
        tp = [r["two_phi"] for r in fit if np.isfinite(r["two_phi"])]
        rel = [r["rel"] for r in fit if np.isfinite(r["rel"])]
        print(f"| {model} | {group} | {len(sel)} | {len(fit)} | {fmt(med(alphas))} | {rng} "
              f"| {fmt(med([r['r2'] for r in fit]))} | {fmt(med(bp))} | {fmt(med(tp))} | {fmt(med(rel))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="tiny-gpt probe sequences (k)")
    parser.add_argument("--small-samples", type=int, default=512, help="MLP/CNN probe samples")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timing repeats")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--save", type=Path, default=None, help="write netCDF files and figures here")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"# Spectral core benchmark (torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.dtype})\n\nAt start: {load()}.")

    gpt = builtin_problem("tiny-gpt", num_samples=args.samples, batch_size=args.samples, dtype=dtype,
                          progress=False)
    small = {name: builtin_problem(name, num_samples=args.small_samples, batch_size=args.small_samples,
                                   dtype=dtype, progress=False) for name in ("mlp", "cnn")}
    for method in ("block", "full"):  # warm-up: forward-AD set-up, both kernels, both paths
        for per_call in (None, 1):
            layer_spectra(gpt, layers="lm_head.weight", top_k=4, method=method,
                          directions_per_call=per_call)

    t0, c0 = time.perf_counter(), time.process_time()
    gpt_spectra = layer_spectra(gpt, top_k=args.top_k)
    spectra_seconds = (time.perf_counter() - t0, time.process_time() - c0)
    timing_rows = curvature_timings(gpt, args.top_k, args.repeats)
    print_timings(timing_rows, spectra_seconds, gpt, args.top_k)

    t0 = time.perf_counter()
    gpt_kron = kronecker_alignment(gpt, top_k=args.top_k)
    print(f"\n`kronecker_alignment` on tiny-gpt (all layers): {time.perf_counter() - t0:.2f} s wall.")
    datasets = {"tiny-gpt": (gpt_spectra, gpt_kron)}
    for name, problem in small.items():
        t0 = time.perf_counter()
        spectra = per_layer(layer_spectra, problem, args.top_k)
        kron = per_layer(kronecker_alignment, problem, args.top_k)
        print(f"`layer_spectra` + `kronecker_alignment` on {name} (N = {problem.num_params}, "
              f"{problem.num_samples} samples): {time.perf_counter() - t0:.2f} s wall.")
        datasets[name] = (spectra, kron)
    rows = [r for label, (s, k) in datasets.items() for r in layer_rows(label, s, k)]
    print_layers(rows)
    print_by_type(rows)
    print(f"\nAt end: {load()}.")

    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        for label, (spectra, kron) in datasets.items():
            results.save(spectra, args.save / f"spectra-{label}.nc", overwrite=True)
            results.save(kron, args.save / f"kronecker-{label}.nc", overwrite=True)
        spectra_only = {label: s for label, (s, _) in datasets.items()}
        figures = {
            "alpha-fits-tiny-gpt": plots.plot_alpha_fits(gpt_spectra),
            "spectral-transfer": plots.plot_spectral_transfer(spectra_only),
            "rank-profile-bic": plots.plot_rank_profile_bic(spectra_only),
            "alpha-by-layer-type": plots.plot_alpha_by_layer_type(spectra_only),
        }
        for name, fig in figures.items():
            fig.savefig(args.save / f"{name}.png", dpi=120)
        print(f"Saved netCDF files and figures to {args.save}.")


if __name__ == "__main__":
    main()
