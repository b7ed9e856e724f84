"""The curvature toolkit against dense ground truth and against scipy/PyHessian-style baselines.

One run prints one Markdown table (issue #16's checks) and the measurements
behind each row:

1. per-layer top-4 of every layer of a small built-in transformer
   (:func:`curvprobe.layer_eigenvalues`) against the dense block Hessians;
2. the 5 smallest eigenvalues (``which="smallest"``) against the dense
   Hessian, at w* and at a point with negative curvature;
3. Hutch++ against Hutchinson at 60 products on the trained built-in MLP,
   dense trace, 20 seeds (:func:`curvprobe.trace`);
4. SLQ (:func:`curvprobe.spectral_density`, 10 probes × 80 steps) against
   the dense spectrum of an MLP with N ≈ 2k (Wasserstein-1 over the spectral
   width), next to PyHessian's recipe (Lanczos from one Rademacher probe,
   100 steps, the non-symmetric ``eig`` of T, its σ² = 1e-5 kernel) at its
   default and at equal products;
5. ``gm_full`` against ``full_mc`` on tiny-gpt at every σ of the grid inside
   the validated regime: agreement in combined standard errors and the wall
   time to equal standard error, ``(t_mc · SE_mc²) / (t_gm · SE_gm²)``
   (gm_full's one set of moments, with its 4 block products per unit on the
   output layer, charged in full to every σ; each time the best of
   ``--repeats`` interleaved runs);
6. wall time to a certified top-20 at 1e-3 on tiny-gpt: ``method="block"``
   against single-vector Lanczos and scipy's ``eigsh`` (best of
   ``--repeats`` interleaved runs each; the HVP count may be higher).

All speed figures are ratios of timings inside this one run; the load
average before and after is printed.

    python benchmarks/toolkit.py [--samples 64] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from scipy.stats import wasserstein_distance

import curvprobe
from curvprobe import Problem, top_eigenspace
from curvprobe.criteria import engine
from curvprobe.criteria.spec import NOISE_STREAMS
from curvprobe.zoo.builtin import builtin_problem
from curvprobe.zoo.models import MLP, GPTConfig, MLPConfig, TinyGPT, sample_cross_entropy, token_cross_entropy


def dense_hessian(problem: Problem, w: torch.Tensor | None = None) -> torch.Tensor:
    """∇²L by jacfwd(grad) of the summed chunk losses (float64 problems)."""
    n = problem.num_samples
    point = problem.params if w is None else w
    return torch.func.jacfwd(torch.func.grad(lambda x: problem.chunk_losses(x, 0, n).sum() / n))(point)


def small_gpt(seed: int = 0) -> Problem:
    config = GPTConfig(vocab_size=13, seq_len=8, n_layer=2, n_head=2, n_embd=12, mlp_ratio=2)
    model = TinyGPT(config, seed=seed).double().eval()
    ids = torch.randint(0, 13, (16, 9), generator=torch.Generator().manual_seed(seed))
    return Problem(model, token_cross_entropy, ids[:, :-1], ids[:, 1:], batch_size=8)


def mlp_2k(seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    model = MLP(MLPConfig(widths=(16, 48, 24, 3)), seed=seed).double().eval()
    X = torch.randn(256, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (256,), generator=gen)
    return Problem(model, sample_cross_entropy, X, y, batch_size=256)


# ------------------------------------------------------------------ rows
def per_layer_row() -> dict:
    problem = small_gpt()
    H = dense_hessian(problem)
    slices = problem.layer_slices()
    ds = curvprobe.layer_eigenvalues(problem, 4, tol=1e-9)
    worst, lines = 0.0, []
    for layer in ds["layer"].values:
        row = ds.sel(layer=layer)
        idx = torch.cat([torch.arange(slices[n].start, slices[n].stop)
                         for n in str(row["parameters"].values).split(",")])
        lam = np.linalg.eigvalsh(H[idx][:, idx].numpy())[::-1][:4]
        err = float(np.abs(row["eigenvalue"].values - lam).max() / abs(lam[0]))
        worst = max(worst, err)
        lines.append(f"| {layer} | {int(row['num_params'])} | {int(row['num_matvecs'])} | "
                     f"{int(row['converged'].sum())}/4 | {err:.1e} |")
    return {"worst": worst, "certified": bool(ds["converged"].all()), "layers": ds.sizes["layer"],
            "N": problem.num_params, "lines": lines, "costs": block_costs()}


def block_costs(columns: int = 16, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Best wall ms per column of Hessian and GGN block products on tiny-gpt
    (64 samples, one chunk), for the whole network and three blocks (interleaved)."""
    problem = builtin_problem("tiny-gpt", num_samples=64, batch_size=64, progress=False)
    specs = {"all parameters": None, "lm_head.weight": "lm_head.weight", "blocks.1.*": "blocks.1.*",
             "blocks.0.*": "blocks.0.*"}
    ops = {(name, kind): getattr(problem, kind)(params=spec)
           for name, spec in specs.items() for kind in ("hessian_operator", "ggn_operator")}
    gen = torch.Generator().manual_seed(0)
    best = dict.fromkeys(ops, math.inf)
    for _ in range(repeats):
        for key, op in ops.items():
            V = torch.randn(op.shape[0], columns, generator=gen, dtype=torch.float64)
            t0 = time.perf_counter()
            op.matmat(V)
            best[key] = min(best[key], 1e3 * (time.perf_counter() - t0) / columns)
    return {name: (best[name, "hessian_operator"], best[name, "ggn_operator"]) for name in specs}


def smallest_row() -> dict:
    problem = small_gpt(1)
    out = []
    gen = torch.Generator().manual_seed(3)
    for label, shift in (("w*", 0.0), ("w* + 0.3 ξ", 0.3)):
        w = problem.params + shift * torch.randn(problem.num_params, generator=gen, dtype=torch.float64)
        lam = np.linalg.eigvalsh(dense_hessian(problem, w).numpy())
        es = top_eigenspace(problem.hessian_operator(w=w), 5, tol=1e-8, which="smallest")
        err = float(np.abs(np.sort(es.values.numpy()) - lam[:5]).max() / np.abs(lam).max())
        out.append({"point": label, "err": err, "certified": es.all_converged, "hvps": es.num_matvecs,
                    "lam_min": float(lam[0]), "norm": float(np.abs(lam).max())})
    return {"rows": out, "worst": max(r["err"] for r in out), "certified": all(r["certified"] for r in out)}


def trace_row(seeds: int = 20) -> dict:
    problem = builtin_problem("mlp", num_samples=1024, batch_size=1024, dtype=torch.float64, progress=False)
    exact = float(torch.trace(dense_hessian(problem)))
    op = problem.hessian_operator()
    err = {m: [abs(curvprobe.trace(op, method=m, num_matvecs=60, seed=s).value - exact) / abs(exact)
               for s in range(seeds)] for m in ("hutch++", "hutchinson")}
    mean = {m: float(np.mean(v)) for m, v in err.items()}
    return {"exact": exact, "N": problem.num_params, "mean": mean,
            "ratio": mean["hutch++"] / mean["hutchinson"]}


def pyhessian_slq(op, iters: int, probes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PyHessian's ``density``: Rademacher probe, Lanczos with one Gram–Schmidt
    pass against all previous vectors, T from α/β, ``eig`` (non-symmetric),
    weights b[0, :]² per probe (not divided by the number of probes)."""
    gen = torch.Generator().manual_seed(seed)
    n = op.shape[0]
    nodes, weights = [], []
    for _ in range(probes):
        v = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).double()
        v = v / v.norm()
        vs, alphas, betas = [v], [], []
        w = op.matvec(v)
        alpha = float(w @ v)
        alphas.append(alpha)
        w = w - alpha * v
        for _ in range(1, iters):
            beta = float(w.norm())
            betas.append(beta)
            for u in vs:  # PyHessian's orthnormal(w, v_list): one pass
                w = w - float(w @ u) * u
            v = w / w.norm()
            vs.append(v)
            w = op.matvec(v)
            alpha = float(w @ v)
            alphas.append(alpha)
            w = w - alpha * v - beta * vs[-2]
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        a, b = np.linalg.eig(T)
        nodes.append(a.real)
        weights.append(np.abs(b[0, :]) ** 2)
    return np.array(nodes), np.array(weights)


def pyhessian_density(nodes: np.ndarray, weights: np.ndarray, num_bins: int = 10_000,
                      sigma_squared: float = 1e-5, overhead: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """PyHessian's ``density_generate``: a Gaussian of *variance*
    ``σ² · max(1, width)`` per node, averaged over probes, normalised to 1."""
    lmax, lmin = nodes.max(axis=1).mean() + overhead, nodes.min(axis=1).mean() - overhead
    grid = np.linspace(lmin, lmax, num_bins)
    var = sigma_squared * max(1.0, lmax - lmin)
    dens = np.mean([(np.exp(-(grid[:, None] - x[None, :]) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)) @ w
                    for x, w in zip(nodes, weights)], axis=0)
    return grid, dens / (dens.sum() * (grid[1] - grid[0]))


PYHESSIAN_RUNS = (("PyHessian default (1 × 100)", 1, 100), ("PyHessian recipe, 10 × 80", 10, 80))


def density_row() -> dict:
    problem = mlp_2k()
    lam = np.linalg.eigvalsh(dense_hessian(problem).numpy())
    width = lam.max() - lam.min()
    op = problem.hessian_operator()
    sd = curvprobe.spectral_density(op, num_probes=10, lanczos_steps=80, seed=0)
    ours = sd.wasserstein(lam) / width
    out = {"N": problem.num_params, "ours": ours, "bandwidth": sd.bandwidth, "width": width}
    for label, probes, iters in PYHESSIAN_RUNS:
        nodes, weights = pyhessian_slq(problem.hessian_operator(), iters, probes, seed=0)
        w1 = wasserstein_distance(nodes.ravel(), lam, (weights / probes).ravel()) / width
        grid, dens = pyhessian_density(nodes, weights)
        out[label] = (w1, _l1_to_dense(grid, dens, lam, math.sqrt(1e-5 * max(1.0, np.ptp(grid)))))
    out["ours_l1"] = _l1_to_dense(sd.grid.numpy(), sd.density.numpy(), lam, sd.bandwidth)
    return out


def _l1_to_dense(grid: np.ndarray, dens: np.ndarray, lam: np.ndarray, h: float) -> float:
    """∫|ρ − ρ_dense| on ``grid``, ρ_dense the dense spectrum smoothed by the same Gaussian (std h)."""
    kernel = np.exp(-0.5 * ((grid[:, None] - lam[None, :]) / h) ** 2)
    ref = kernel.sum(axis=1) / (lam.size * h * math.sqrt(2 * math.pi))
    return float(np.trapezoid(np.abs(dens - ref), grid))


def gm_full_row(samples: int, mc_samples: int, units: int, repeats: int) -> dict:
    """gm_full against full_mc at every σ of the grid inside the validated regime.

    The moments of ``B_k`` (``units`` two-level Hutchinson units,
    :func:`curvprobe.criteria.engine.full_space_moments`) do not depend on σ:
    one set serves every σ (as in :func:`curvprobe.stabilization`), so
    gm_full's wall time is charged in full to each σ, and full_mc's per σ (its
    draws are per σ). Both are the best of ``repeats`` interleaved runs (the
    same seeds: the values and standard errors do not change).
    """
    problem = builtin_problem("tiny-gpt", num_samples=samples + 1, batch_size=64, progress=False)
    k = samples
    grid = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    validity = curvprobe.quadratic_validity(problem, grid, k=k, mc_samples=8)
    regime = validity.attrs["validated_sigma_max"]
    sigmas = [s for s in grid if s <= regime]
    t_mc = t_gm = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        mc = curvprobe.stabilization(problem, [k], sigmas=sigmas, estimators=["full_mc"],
                                     mc_samples=mc_samples)
        t_mc = min(t_mc, (time.perf_counter() - t0) / len(sigmas))
        t0 = time.perf_counter()
        moments = engine.full_space_moments(problem, k, units, seed=0, stream=NOISE_STREAMS["gm_full"])
        a_k = float(problem.per_sample_losses(stop=k + 1)[k] - problem.loss(k=k)) / (k + 1)
        t_gm = min(t_gm, time.perf_counter() - t0)
    rows = []
    for sigma in sigmas:
        gm, gm_se = engine.estimate(engine.gm_full(moments, a_k, sigma))
        cell = mc.sel(estimator="full_mc", k=k, sigma=sigma).max(dim="dim")
        mc_v, mc_se = float(cell["value"]), float(cell["stderr"])
        rows.append({"sigma": sigma, "mc": (mc_v, mc_se), "gm": (gm, gm_se),
                     "z": abs(gm - mc_v) / math.hypot(mc_se, gm_se),
                     "speedup": (t_mc * mc_se**2) / (t_gm * gm_se**2)})
    return {"rows": rows, "regime": regime, "k": k, "t_mc": t_mc, "t_gm": t_gm, "N": problem.num_params,
            "S": mc_samples, "units": units, "r": engine.default_probes_per_unit(k)}


def eigensolver_row(samples: int, repeats: int, block_size: int) -> dict:
    # one chunk, and double backward for every width: "auto" takes the vmapped
    # forward-over-reverse path from 4 vectors on, which is slower per vector here
    problem = builtin_problem("tiny-gpt", num_samples=samples, batch_size=256, progress=False)
    problem.hvp_mode = "double_backward"
    costs = hvp_costs(problem, tuple(sorted({1, 2, 4, 8, 16, 32, block_size})))
    v0 = np.random.default_rng(0).standard_normal(problem.num_params)
    best = {"block": math.inf, "lanczos": math.inf, "eigsh": math.inf}
    cpu = dict(best)
    info: dict[str, tuple] = {}
    for _ in range(repeats):  # interleaved: each method sees the same load
        for method in ("block", "lanczos", "eigsh"):
            op = problem.hessian_operator()
            t0, c0 = time.perf_counter(), time.process_time()
            if method == "eigsh":
                vals, _ = eigsh(op.to_scipy(), k=20, which="LA", tol=1e-3, v0=v0)
                info[method] = (op.num_matvecs, "n/a (no certificate)", np.sort(vals)[::-1])
            else:
                es = top_eigenspace(op, 20, tol=1e-3, method=method,
                                    block_size=block_size if method == "block" else None)
                info[method] = (es.num_matvecs, f"{int(es.converged.sum())}/20", es.values.numpy())
            best[method] = min(best[method], time.perf_counter() - t0)
            cpu[method] = min(cpu[method], time.process_time() - c0)
    ref = info["eigsh"][2]
    dev = {m: float(np.abs(info[m][2] - ref).max() / abs(ref[0])) for m in info}
    return {"best": best, "cpu": cpu, "info": info, "dev": dev, "N": problem.num_params,
            "samples": samples, "b": block_size, "hvp": costs}


def hvp_costs(problem: Problem, widths: tuple[int, ...], repeats: int = 3) -> dict[int, float]:
    """Best wall seconds per vector of an HVP on ``b`` columns, for each width (interleaved)."""
    gen = torch.Generator().manual_seed(0)
    blocks = {b: torch.randn(problem.num_params, b, generator=gen, dtype=torch.float64) for b in widths}
    best = dict.fromkeys(widths, math.inf)
    for _ in range(repeats):
        for b, V in blocks.items():
            t0 = time.perf_counter()
            problem.hvp(V)
            best[b] = min(best[b], (time.perf_counter() - t0) / b)
    return best


MEMORY_CHILD = r"""
import json, sys, torch
from curvprobe import top_eigenspace
from curvprobe.core.operators import LinearOperator

class Diagonal(LinearOperator):
    def __init__(self, d):
        super().__init__(d.numel()); self.d = d
    def _matmat(self, V):
        return self.d[:, None] * V

def peak():  # VmHWM: this process's resident high-water mark
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) * 1024

N, D, m, dtype = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), getattr(torch, sys.argv[4])
gen = torch.Generator().manual_seed(0)
d = torch.cat([torch.linspace(1.0, 0.9, D, dtype=torch.float64),
               0.85 * torch.rand(N - D, generator=gen, dtype=torch.float64)])
top_eigenspace(Diagonal(d[:1000].clone()), 2)
base = peak()
es = top_eigenspace(Diagonal(d), D, tol=1e-6, basis_dtype=dtype, basis_size=m)
print(json.dumps({"grew": peak() - base, "certified": es.all_converged, "hvps": es.num_matvecs}))
"""


def memory_row(N: int = 2_000_000, D: int = 8, m: int = 48) -> list[dict]:
    """Peak resident memory of a solve that fills its basis (a diagonal operator,
    so one product costs no memory of its own), float64 and float32 bases, in
    fresh processes, against :func:`curvprobe.linalg.eigensolver_memory`."""
    import json
    import subprocess

    out = []
    for name in ("float64", "float32"):
        run = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(N), str(D), str(m), name],
                             capture_output=True, text=True, check=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        model = curvprobe.linalg.eigensolver_memory(N, m, getattr(torch, name), D=D)
        out.append({"dtype": name, "grew": result["grew"], "model": model, "certified": result["certified"],
                    "hvps": result["hvps"]})
    return out


# ------------------------------------------------------------------ output
def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="tiny-gpt samples (rows 5, 6)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of rows 5 and 6")
    parser.add_argument("--block-size", type=int, default=curvprobe.linalg.BLOCK_SIZE)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and draws")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=("layers", "smallest", "trace", "density", "gm", "eig", "memory"),
                        help="run these parts only (prints their details, not the table)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    repeats = 1 if args.quick else args.repeats
    print(f"## Curvature toolkit (torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print(f"At start: {load()}.\n")
    steps = {"layers": per_layer_row, "smallest": smallest_row, "trace": trace_row, "density": density_row,
             "gm": lambda: gm_full_row(args.samples, 8 if args.quick else 32, 15 if args.quick else 60,
                                       repeats),
             "eig": lambda: eigensolver_row(args.samples, repeats, args.block_size), "memory": memory_row}
    if args.only:
        steps = {name: steps[name] for name in args.only}
    rows = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        rows[name] = step()
        print(f"[{name}: {time.perf_counter() - t0:.0f} s; {load()}]", file=sys.stderr, flush=True)
    if not args.only:
        print_table(rows)
    print_details(rows)
    print(f"\nAt end: {load()}.")


def _certified(flag: bool) -> str:
    return "certified" if flag else "NOT certified"


def print_table(r: dict) -> None:
    lay, sm, tr, de, gm, eig = (r[k] for k in ("layers", "smallest", "trace", "density", "gm", "eig"))
    wall = eig["best"]["block"] / eig["best"]["eigsh"]
    cpu = eig["cpu"]["block"] / eig["cpu"]["eigsh"]
    rows = [
        ((f"per-layer top-4 of every layer of TinyGPT (small config, {lay['layers']} layers, "
         f"N = {lay['N']:,}) vs dense block Hessians"), "≤ 1e-8 relative, certified",
         f"{lay['worst']:.1e}, {_certified(lay['certified'])}"),
        ((f"smallest 5 eigenvalues vs dense (at w* and at a point with λ_min = "
         f"{sm['rows'][1]['lam_min']:.3g})"), "≤ 1e-6 relative to ‖H‖",
         f"{sm['worst']:.1e}, {_certified(sm['certified'])}"),
        ((f"Hutch++ / Hutchinson mean relative trace error, 60 products, trained MLP (N = {tr['N']}), "
         "20 seeds"), "≤ 0.6",
         f"{tr['ratio']:.3f} ({tr['mean']['hutch++']:.2e} vs {tr['mean']['hutchinson']:.2e})"),
        (f"SLQ W₁ / spectral width, 10 probes × 80 steps, MLP N = {de['N']:,}", "≤ 0.02",
         f"{de['ours']:.4f}"),
        (f"gm_full vs full_mc, tiny-gpt, k = {gm['k']}, σ = {_sigmas(gm)} (validated σ ≤ {gm['regime']:g})",
         "within 2 combined SE; ≥ 100× less wall time at equal SE",
         (f"max {max(row['z'] for row in gm['rows']):.2f} combined SE; "
          + ", ".join(f"{row['speedup']:,.0f}× at σ = {row['sigma']:g}" for row in gm["rows"]))),
        (f"block (b = {eig['b']}) time to a certified top-20 at 1e-3, tiny-gpt", "≤ 0.8 × eigsh's wall time",
         (f"{wall:.2f} × eigsh wall ({cpu:.2f} × CPU), {eig['info']['block'][1]} certified; "
         f"{eig['best']['block'] / eig['best']['lanczos']:.2f} × single-vector Lanczos")),
    ]
    print("| check | target | measured |\n|---|---|---|")
    for check, target, measured in rows:
        print(f"| {check} | {target} | {measured} |")


def print_details(r: dict) -> None:
    printers = {"layers": _layers_details, "smallest": _smallest_details, "trace": _trace_details,
                "density": _density_details, "gm": _gm_details, "eig": _eig_details,
                "memory": _memory_details}
    for name, printer in printers.items():
        if name in r:
            printer(r)


def _memory_details(r: dict) -> None:
    print("\n### Eigensolver memory (a diagonal operator, N = 2,000,000, D = 8, basis 48, tol 1e-6)\n")
    print("| basis | peak resident growth MiB | eigensolver_memory MiB | measured / model | HVPs "
          "| certified |")
    print("|---|---|---|---|---|---|")
    for row in r["memory"]:
        print(f"| {row['dtype']} | {row['grew'] / 2**20:.0f} | {row['model'] / 2**20:.0f} | "
              f"{row['grew'] / row['model']:.2f} | {row['hvps']} | {row['certified']} |")


def _layers_details(r: dict) -> None:
    print("\n### Per-layer top-4 (small TinyGPT, tol 1e-9)\n")
    print("| layer | parameters | products | certified | max \\|θ−λ\\|/\\|λ₁\\| |\n|---|---|---|---|---|")
    print("\n".join(r["layers"]["lines"]))
    print("\nBlock products on tiny-gpt (64 samples, 16 columns), best wall ms per column:\n")
    print("| block | Hessian | GGN |\n|---|---|---|")
    for name, (h, g) in r["layers"]["costs"].items():
        print(f"| {name} | {h:.1f} | {g:.1f} |")


def _smallest_details(r: dict) -> None:
    print("\n### Smallest 5 (tol 1e-8)\n\n| point | products | certified | λ_min | ‖H‖ | max error / ‖H‖ |")
    print("|---|---|---|---|---|---|")
    for row in r["smallest"]["rows"]:
        print(f"| {row['point']} | {row['hvps']} | {row['certified']} | {row['lam_min']:.3e} "
              f"| {row['norm']:.3e} | {row['err']:.1e} |")


def _trace_details(r: dict) -> None:
    tr = r["trace"]
    print(f"\n### Trace\n\ntr H = {tr['exact']:.6g} (dense); mean relative error over 20 seeds at 60 "
          f"products: Hutch++ {tr['mean']['hutch++']:.3e}, Hutchinson {tr['mean']['hutchinson']:.3e}")


def _density_details(r: dict) -> None:
    de = r["density"]
    print(f"\n### Spectral density (N = {de['N']:,}, spectral width {de['width']:.4g})\n")
    print("| method | products | W₁ / width | ∫\\|ρ − ρ_dense\\| (same kernel) |\n|---|---|---|---|")
    print(f"| curvprobe SLQ, 10 × 80, bandwidth {de['bandwidth']:.3g} | 800 | {de['ours']:.4f} "
          f"| {de['ours_l1']:.3f} |")
    for label, probes, iters in PYHESSIAN_RUNS:
        w1, l1 = de[label]
        print(f"| {label}, σ² = 1e-5 kernel | {probes * iters} | {w1:.4f} | {l1:.3f} |")


def _sigmas(gm: dict) -> str:
    return ", ".join(f"{row['sigma']:g}" for row in gm["rows"])


def _gm_details(r: dict) -> None:
    gm = r["gm"]
    print(f"\n### gm_full vs full_mc (tiny-gpt, N = {gm['N']:,}, k = {gm['k']})\n")
    print(f"Wall time per σ (best of interleaved runs): full_mc (S = {gm['S']}) {gm['t_mc']:.2f} s; gm_full "
          f"({gm['units']} units of 1 + {gm['r'] + 1} products and 4 + 4 on lm_head's block, one set for "
          f"every σ) {gm['t_gm']:.2f} s.\n")
    print("| σ | full_mc | gm_full | \\|Δ\\| / combined SE | wall time to equal SE: full_mc / gm_full |")
    print("|---|---|---|---|---|")
    for row in gm["rows"]:
        (mv, ms), (gv, gs) = row["mc"], row["gm"]
        print(f"| {row['sigma']:g} | {mv:.4e} ± {ms:.1e} | {gv:.4e} ± {gs:.1e} | {row['z']:.2f} "
              f"| {row['speedup']:,.0f}× |")


def _eig_details(r: dict) -> None:
    eig = r["eig"]
    print(f"\n### Top-20 at 1e-3 on tiny-gpt (N = {eig['N']:,}, {eig['samples']} samples; "
          "best of interleaved runs)\n")
    hvp = eig["hvp"]
    cells = ", ".join(f"{b}: {t * 1e3:.1f} ms ({t / hvp[1]:.2f})" for b, t in hvp.items())
    print(f"HVP (double backward), best wall per vector by columns per product (ratio to one): {cells}.")
    budget = 0.8 * eig["best"]["eigsh"] / min(hvp.values())
    print(f"At the cheapest per-vector cost, 0.8 × eigsh's wall time buys {budget:.0f} products "
          "(with no other cost): the most a block path may spend to meet the target.\n")
    print("| method | HVPs | wall s (best) | CPU s (best) | certified | max \\|θ−θ_eigsh\\|/\\|θ₁\\| |")
    print("|---|---|---|---|---|---|")
    for m in ("block", "lanczos", "eigsh"):
        hvps, cert, _ = eig["info"][m]
        print(f"| {m} | {hvps} | {eig['best'][m]:.2f} | {eig['cpu'][m]:.2f} | {cert} | {eig['dev'][m]:.1e} |")


if __name__ == "__main__":
    main()
