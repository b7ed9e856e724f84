"""Where gm_full's standard error comes from on tiny-gpt, and what would lower it.

    OMP_NUM_THREADS=1 python benchmarks/gm_variance.py [--samples 64] [--draws 16] [--tune]

At σ ≥ 0.01 gm_full's error is almost all its trace term, so this measures
the per-draw variance and cost of the two halves of a two-level Hutchinson
unit (:func:`curvprobe.criteria.engine.full_space_moments`) at k = ``samples``:

1. ``t1``: the mean of ``r`` deflated Rademacher probes of ``B₁ = H_{k+1}/(k+1)``
   after the 64-column sketch, for r = 1, 2, 4, 8;
2. ``t2 = v₀ᵀ B_m v₀`` with ``B_m = H^(k)/(k+1)``, plain and after deflating
   ``B_m`` by a Hutch++ sketch of s columns (its exact part added back);
3. ``t2`` with the output layer (``lm_head``) left out of the probe (the
   heads of :func:`~curvprobe.criteria.engine.full_space_moments`' split),
   and one probe of that block through its own block products;
   ``tr H^(k)`` by one shared probe against independent probes per sample
   (one single-sample HVP each);
4. the cost per column of a one-sample HVP (the ``B₁`` products) by each
   kernel of :data:`curvprobe.core.problem.HVP_MODES`;
5. with ``--tune``: whole :func:`~curvprobe.criteria.engine.full_space_moments`
   runs (60 units, 3 seeds) for r = 8, 12, 16, 24 probes per unit and sketch
   sizes 32 and 64, then without the output layer's split and with 2 and 8
   block probes — seconds, variance of a unit's trace term, and their
   product over the units (the figure of merit behind the defaults).

Each row prints the variance over ``draws`` draws and the seconds per draw;
variance × seconds is the figure of merit (lower is better).
"""

from __future__ import annotations

import argparse
import time

import torch

from curvprobe.criteria import engine
from curvprobe.zoo.builtin import builtin_problem


def rademacher(n: int, m: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n, m), generator=g, dtype=torch.float64) * 2 - 1


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--tune", action="store_true", help="also time whole runs over r and the sketch size")
    args = parser.parse_args()
    k, u = args.samples, args.draws
    problem = builtin_problem("tiny-gpt", num_samples=k + 1, batch_size=64, progress=False)
    n, B, g = problem.num_params, engine.HessianDifference(problem, k), torch.Generator().manual_seed(7)
    Q, _, _ = engine.sample_sketch(B, engine.default_sketch_size(k, n), g)
    heads = rademacher(n, u, g)
    Bm_heads, t_bm = timed(lambda: B.mean_part(heads))
    t2 = (heads * Bm_heads).sum(0)
    print(f"\n## gm_full's trace term on tiny-gpt (N = {n:,}, k = {k}, {u} draws)\n")
    print("| estimate | variance per draw | seconds per draw | variance × seconds |")
    print("|---|---|---|---|")
    for r in (1, 2, 4, 8):
        def unit(r: int = r) -> float:
            X = rademacher(n, r, g)
            X -= Q @ (Q.T @ X)
            return float((X * B.sample_part(X)).sum(0).mean())
        draws = [timed(unit) for _ in range(u)]
        var, sec = torch.tensor([d[0] for d in draws]).var().item(), sum(d[1] for d in draws) / u
        print(f"| t1, r = {r} deflated B₁ probes | {var:.3e} | {sec:.3f} | {var * sec:.2e} |")
    print(f"| t2, plain | {t2.var().item():.3e} | {t_bm / u:.3f} | {t2.var().item() * t_bm / u:.2e} |")
    for s in (8, 32):
        def sketch(s: int = s) -> tuple[torch.Tensor, torch.Tensor]:
            basis = torch.linalg.qr(B.mean_part(rademacher(n, s, g)))[0]
            return basis, B.mean_part(basis)
        (Qm, Z), t_sketch = timed(sketch)
        X = heads - Qm @ (Qm.T @ heads)
        t2d = (X * B.mean_part(X)).sum(0) + float((Qm * Z).sum())
        sec = t_bm / u + t_sketch / u
        print(f"| t2, B_m deflated by a {s}-column sketch (sketch charged over the draws) | "
              f"{t2d.var().item():.3e} | {sec:.3f} | {t2d.var().item() * sec:.2e} |")
    head = problem.layer_slices()["lm_head.weight"]
    rest = heads.clone()
    rest[head] = 0
    t2r = (rest * B.mean_part(rest)).sum(0)
    print(f"| t2 on the probes' non-output-layer part (the split's heads v_R) | "
          f"{t2r.var().item():.3e} | {t_bm / u:.3f} | {t2r.var().item() * t_bm / u:.2e} |")
    block = engine.split_block(problem, True)
    A = rademacher(block.size, u, g)
    (_, Bm_A), t_block = timed(lambda: B.block_parts(block, A))
    t2a = (A * Bm_A).sum(0)
    print(f"| t2 on lm_head's block, one block probe (both block products charged) | "
          f"{t2a.var().item():.3e} | {t_block / u:.4f} | {t2a.var().item() * t_block / u:.2e} |")
    shared = (heads * problem.hvp(heads, k)).sum(0)

    def per_sample() -> float:
        W = rademacher(n, k, g)
        return sum(float(W[:, i] @ problem.hvp(W[:, i:i + 1], i + 1, start=i)[:, 0]) for i in range(k)) / k
    draws = [timed(per_sample) for _ in range(u)]
    var = torch.tensor([d[0] for d in draws]).var().item()
    print(f"| tr H^(k): one shared probe | {shared.var().item():.3e} | {t_bm / u:.3f} | – |")
    print(f"| tr H^(k): a probe per sample (k single-sample HVPs) | {var:.3e} | "
          f"{sum(d[1] for d in draws) / u:.3f} | – |")
    kernel_table(problem, k, g)
    if args.tune:
        tune_table(problem, k)


def kernel_table(problem, k: int, g: torch.Generator) -> None:
    """Milliseconds per column of ``H_{k+1} V`` (one sample) by each HVP kernel, best of 3."""
    widths = (2, 4, 8, 17, 51)  # 51: a block of 3 units at r = 16
    print(f"\n## One-sample HVP, ms per column (N = {problem.num_params:,})\n")
    print("| kernel | " + " | ".join(f"{m} columns" for m in widths) + " |")
    print("|---|" + "---|" * len(widths))
    for mode in ("double_backward", "forward_over_reverse", "batched_double_backward"):
        cells = []
        for m in widths:
            V = rademacher(problem.num_params, m, g)
            best = min(timed(lambda V=V, mode=mode: problem.hvp(V, k + 1, start=k, mode=mode))[1]
                       for _ in range(3))
            cells.append(f"{1000 * best / m:.2f}")
        print(f"| {mode} | " + " | ".join(cells) + " |")


def tune_table(problem, k: int, units: int = 60, seeds: int = 3) -> None:
    """Whole ``full_space_moments`` runs: mean seconds, mean variance of a unit's
    ``t`` and seconds × variance / units (the variance of tr B_k per second),
    over the sketch size s and the probes r (output layer split off, 4 block
    probes), then without the split and with 2 and 8 block probes."""
    engine.full_space_moments(problem, k, 2, seed=99, stream=5)  # warm-up
    print(f"\n## full_space_moments at k = {k}: {units} units, {seeds} seeds (default r = "
          f"{engine.default_probes_per_unit(k)}, s = {engine.default_sketch_size(k, problem.num_params)})\n")
    print("| sketch s | probes r | split (block probes) | seconds | variance of t per unit "
          "| seconds × variance / units |")
    print("|---|---|---|---|---|---|")
    grid = [(s, r, True, 4) for s in (32, 64) for r in (8, 12, 16, 24)]
    for s, r, split, nb in [*grid, (64, 16, False, 4), (64, 16, True, 2), (64, 16, True, 8)]:
        runs = [timed(lambda seed=seed, r=r, s=s, split=split, nb=nb: engine.full_space_moments(
            problem, k, units, seed=seed, stream=5, probes_per_unit=r, sketch_size=s, split=split,
            block_probes=nb)) for seed in range(seeds)]
        sec = sum(t for _, t in runs) / seeds
        var = sum(float(m.trace_terms.var()) for m, _ in runs) / seeds
        label = f"lm_head ({nb})" if split else "none"
        print(f"| {s} | {r} | {label} | {sec:.2f} | {var:.4f} | {sec * var / units:.2e} |", flush=True)


if __name__ == "__main__":
    main()
