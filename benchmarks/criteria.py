"""Stabilization criteria on the built-in transformer: engine, estimators, stages.

One run prints markdown tables (paste them as they are):

1. the all-k engine against a per-k loop (same draws, same δ_k);
2. GM against direct MC at S = 32 (one k, D, σ);
3. control-variate MC standard error against direct MC's at equal S, inside
   the validated σ regime;
4. coefficient assembly (one-sample B_k + Ritz matrix) against D HVPs on k
   and on k+1 samples;
5. warm-started (carried Lanczos basis) against cold Lanczos for k → k+1 and
   across grid neighbours;
6. stage timings of a full stabilization run (the paper's Table 2 stages).

All speed figures are ratios of timings taken inside this run.

    python benchmarks/criteria.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np
import torch

from curvprobe import quadratic_validity, stabilization, top_eigenspace
from curvprobe.criteria.engine import all_k_increments, coefficients_per_k, noise, per_k_increments
from curvprobe.criteria.probes import Isotropic
from curvprobe.zoo.builtin import builtin_problem


def clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    K = 256 if args.quick else 1024
    ks = [int(k) for k in np.linspace(K // 16, K, 16)]
    dims, S = [1, 4, 16], 32
    problem = builtin_problem("tiny-gpt", num_samples=K + 1, batch_size=256, progress=False)
    N = problem.num_params
    print(f"## Criteria benchmark (tiny-gpt, N = {N:,}, dtype {problem.dtype}, "
          f"{torch.get_num_threads()} threads)\n")
    print(f"k grid ({len(ks)} values): {ks}\n")

    # 1. all-k engine vs per-k loop --------------------------------------
    S_engine = 4
    draw = lambda s0, s1: Isotropic(1e-3).perturb(  # noqa: E731
        torch.stack([noise(0, 2, s, (N,)) for s in range(s0, s1)]), N)
    # best of three interleaved runs each: the engine takes well under a second,
    # so one burst of load would otherwise decide the ratio
    t_all = t_loop = float("inf")
    for _ in range(3):
        t, fast = clock(lambda: all_k_increments(problem, ks, draw, S_engine))
        t_all = min(t_all, t)
        t, slow = clock(lambda: per_k_increments(problem, ks, draw, S_engine))
        t_loop = min(t_loop, t)
    agree = float((fast - slow).abs().max() / slow.abs().max())
    ideal = sum(k + 1 for k in ks) / (K + 1)
    print("| all-k engine (best of 3) | per-k loop (best of 3) | speed-up | "
          "sample-forward ratio Σ(k+1)/(K+1) | max rel. difference |")
    print("|---|---|---|---|---|")
    print(f"| {t_all:.2f} s | {t_loop:.2f} s | **{t_loop / t_all:.1f}×** | {ideal:.1f} | {agree:.1e} |\n")

    # validity regime ----------------------------------------------------
    sig_grid = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    t_val, validity = clock(lambda: quadratic_validity(problem, sig_grid, k=K, mc_samples=8))
    regime = validity.attrs["validated_sigma_max"]
    inside = [s for s in sig_grid if s <= regime][-2:]
    beyond = [s for s in sig_grid if s > regime][:1]
    sigmas = inside + beyond
    print(f"Validated σ regime (mean rel. error ≤ 0.1 at k = {K}): σ ≤ {regime:g} "
          f"({t_val:.1f} s); probing σ = {sigmas}\n")

    # 6. a full stabilization run (fixed subspace: one eigenspace at K) -----
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_run, ds = clock(lambda: stabilization(
            problem, ks, sigmas=sigmas, dims=dims, mc_samples=S, subspace="fixed",
            validity=validity, estimators=("delta1", "full_mc", "direct_mc", "quad_mc", "gm", "cv_mc")))

    # 2. GM vs direct MC at S = 32 ----------------------------------------
    k = ks[-1]
    es = top_eigenspace(problem.hessian_operator(k), 16, tol=1e-3)
    grad_sum = problem.gradient(k=k) * k
    a_k = float(((problem.per_sample_losses(stop=k + 1)[k]) - problem.loss(k=k)) / (k + 1))
    coeff = coefficients_per_k(problem, k, a_k, es, grad_sum)
    q = coeff.surrogate(16, inside[-1])
    reps = 2000
    t_gm, _ = clock(lambda: [q.gm() for _ in range(reps)])
    t_gm /= reps
    w = problem.params.double()
    xi = noise(0, 1, 0, (S, 16))
    t_direct, _ = clock(lambda: problem.per_sample_losses_at(
        w + (inside[-1] * xi) @ es.vectors.T, stop=k + 1))
    print(f"| stage III at k = {k}, D = 16 | seconds | ratio to GM |")
    print("|---|---|---|")
    print(f"| GM (closed form) | {t_gm:.2e} | 1 |")
    print(f"| direct MC, S = {S} | {t_direct:.2e} | **{t_direct / t_gm:,.0f}×** |\n")

    # 3. control variates -------------------------------------------------
    print("| σ (inside regime) | D | direct MC stderr | cv MC stderr | ratio | (k = largest) |")
    print("|---|---|---|---|---|---|")
    for s in inside:
        for D in dims:
            se = ds["stderr"].sel(k=K, sigma=s, dim=D)
            d, c = float(se.sel(estimator="direct_mc")), float(se.sel(estimator="cv_mc"))
            print(f"| {s:g} | {D} | {d:.2e} | {c:.2e} | **{c / d:.3f}** | |")
    ratios = (ds["stderr"].sel(estimator="cv_mc") / ds["stderr"].sel(estimator="direct_mc")).sel(sigma=inside)
    print(f"\nMedian cv/direct standard-error ratio over all k, D and σ inside the regime: "
          f"{float(ratios.median()):.3f} (max {float(ratios.max()):.3f})\n")

    # 4. assembly vs D HVPs on k and k+1 samples ---------------------------
    print("| k | assembly (1 sample) s | 2·D HVPs on k, k+1 samples s | speed-up | max \\|ΔB\\| |")
    print("|---|---|---|---|---|")
    for k in [ks[0], ks[len(ks) // 2], ks[-1]]:
        es_k = top_eigenspace(problem.hessian_operator(k), 16, tol=1e-3)
        gs = problem.gradient(k=k) * k
        t_fast, c_fast = clock(lambda k=k, es_k=es_k, gs=gs: coefficients_per_k(problem, k, 0.0, es_k, gs))
        U = es_k.vectors

        def naive(U=U, k=k):
            Hk1 = U.T @ problem.hvp(U, k + 1)
            Hk = U.T @ problem.hvp(U, k)
            return (Hk1 - Hk)

        t_naive, dB = clock(naive)
        diff = float((0.5 * (dB + dB.T) - c_fast.B).abs().max() / c_fast.B.abs().max())
        print(f"| {k} | {t_fast:.3f} | {t_naive:.3f} | **{t_naive / t_fast:.1f}×** | {diff:.1e} |")
    print()

    # 5. warm vs cold Lanczos across consecutive k -------------------------
    # warm: each k starts from the previous k's warm result and its carried
    # basis (H^(k) Q from H^(k0) Q plus HVPs on the k − k0 new samples), as
    # stabilization(subspace="per_k") runs; cost counts those partial HVPs in
    # full-HVP equivalents, (k − k0)/k per vector
    def chain(label: str, kk: list[int]) -> None:
        print(f"{label}:\n")
        print("| k | cold HVPs | warm HVPs (full) | warm cost (HVP equiv.) | **cold / warm cost** "
              "| cold s | warm s | wall ratio | warm certified | max \\|θ_warm−θ_cold\\|/θ₁ |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        prev = top_eigenspace(problem.hessian_operator(kk[0]), 16, tol=1e-3, keep_basis=True)
        tot = np.zeros(4)
        for k0, k1 in itertools.pairwise(kk):
            t_cold, cold = clock(lambda k1=k1: top_eigenspace(problem.hessian_operator(k1), 16, tol=1e-3))
            t_warm, warm = clock(lambda k1=k1, prev=prev: top_eigenspace(
                problem.hessian_operator(k1), 16, tol=1e-3, init=prev, keep_basis=True))
            dev = float((cold.values - warm.values).abs().max() / cold.values[0])
            print(f"| {k0}→{k1} | {cold.num_matvecs} | {warm.num_matvecs} | {warm.cost:.1f} | "
                  f"**{cold.cost / warm.cost:.2f}×** | {t_cold:.1f} | {t_warm:.1f} | "
                  f"{t_cold / t_warm:.2f}× | {warm.all_converged} | {dev:.1e} |")
            tot += [cold.cost, warm.cost, t_cold, t_warm]
            prev = warm
        print(f"\nTotal: cold {tot[0]:.0f} HVPs, warm {tot[1]:.1f} HVP equivalents "
              f"(**{tot[0] / tot[1]:.2f}×** fewer); wall {tot[2] / tot[3]:.2f}× less\n")

    chain("Consecutive k (one sample added each step, the criterion's k → k+1)",
          [K - 3, K - 2, K - 1, K])
    chain(f"Grid neighbours (Δk = {ks[1] - ks[0]})", ks[-4:])

    print(f"| stage (stabilization over {len(ks)} k, D ∈ {dims}, σ ∈ {sigmas}, S = {S}, fixed subspace) "
          "| seconds |")
    print("|---|---|")
    for stage, secs in zip(ds["stage"].values, ds["stage_seconds"].values):
        print(f"| {stage} | {secs:.2f} |")
    print(f"| total | {t_run:.2f} |")


if __name__ == "__main__":
    main()
