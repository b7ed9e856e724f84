"""The quick demo's eigensolve: HVPs of the certified top-16 eigenspace.

``curvprobe demo --quick`` solves one eigenspace: the top 16 of the Hessian
of all K + 1 = 65 samples of the built-in tiny transformer (``subspace =
"pooled"``, tol 1e-2, seed 0) with the probe config's guard (``miss_bound``,
``guard_steps``). This script builds the same problem and options from the
demo's settings and the config defaults, and solves it four ways in one run:

* **probe default**: the config's miss bound (certified at it or not);
* **no bound, 10 steps**: the API default guard, whose miss probability is
  only reported;
* **full re-solve**: the probe default with the repair of a detected miss
  asking for D pairs in the complement (the rule before the repair solved
  only the missed pairs), by patching ``missed_count``;
* **no guard**: the bare Lanczos solve (not certified).

    python benchmarks/demo_eigensolve.py
"""

from __future__ import annotations

import time
import warnings
from unittest import mock

from curvprobe import top_eigenspace
from curvprobe.app.config import load_config
from curvprobe.app.demo import QUICK
from curvprobe.app.sources import build_problem


def solve(problem, rows: int, D: int, tol: float, seed: int, options: dict) -> dict:
    """One solve of the pooled Hessian; HVPs, seconds and the certificate."""
    op = problem.hessian_operator(rows)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        es = top_eigenspace(op, D, tol=tol, seed=seed, **options)
    return {"hvps": es.num_matvecs, "seconds": time.perf_counter() - t0,
            "converged": f"{int((es.residuals <= tol).sum())}/{D}",
            "miss": es.miss_probability, "certified": es.certified, "bound": es.miss_bound,
            "theta_D": float(es.values[-1])}


def main() -> None:
    s = QUICK
    config = load_config(None, {
        "model": "builtin:tiny-gpt", "ks": list(s.ks), "sigmas": [1e-3], "dims": list(s.dims),
        "num_data": s.num_data, "tol": s.tol, "seed": s.seed, "subspace": s.subspace,
        "orderings": s.orderings, "batch_size": s.batch_size, "validity": False})
    problem = build_problem(config, progress=False).problem
    options = dict(config.spec().eigen_options)
    D, rows = max(s.dims), max(s.ks) + 1
    full = mock.patch("curvprobe.linalg.guard.missed_count", return_value=D)
    default = f"probe default (miss_bound {config.miss_bound:g}, ≤ {config.guard_steps} guard steps)"
    variants = {
        default: (options, None),
        "no bound, 10 guard steps (API default)": ({}, None),
        "probe default, full re-solve repair (D pairs)": (options, full),
        "no guard": ({"guard_steps": 0}, None),
    }
    print(f"quick demo eigensolve: top {D} of the Hessian of {rows} samples, tol {s.tol:g}, seed {s.seed}\n")
    print("| variant | HVPs | seconds | converged | miss probability | certified | θ_D |")
    print("|---|---|---|---|---|---|---|")
    for name, (opts, patch) in variants.items():
        if patch is None:
            row = solve(problem, rows, D, s.tol, s.seed, opts)
        else:
            with patch:
                row = solve(problem, rows, D, s.tol, s.seed, opts)
        cert = f"yes (≤ {row['bound']:g})" if row["certified"] else "no"
        print(f"| {name} | {row['hvps']} | {row['seconds']:.1f} | {row['converged']} | "
              f"{row['miss']:.3g} | {cert} | {row['theta_D']:.4f} |")


if __name__ == "__main__":
    main()
