"""Measured peak memory of an eigensolve against the model ``eigensolver_memory``.

    python benchmarks/eigensolver_memory.py                  # the table
    python benchmarks/eigensolver_memory.py --worker 1000000 float32   # one solve, one JSON line
    python benchmarks/eigensolver_memory.py --warm           # warm-started solves too

Each solve runs in a fresh process on a diagonal operator of size ``N``
(8 eigenvalues in [0.9, 1], the rest uniform in [0, 0.85]: the basis fills
and restarts), top-8 at tol 1e-6 with a basis of 24 vectors, after a small
warm-up solve. A warm-started solve (``--warm``) is measured after a cold
one on the same operator, from its Eigenspace (``init=``), on the operator
with every eigenvalue moved by up to 1e-3 (the next k of a stabilization
run): its growth is from the resident set before it, with the cold result
alive (the high-water mark reset there, Linux's ``clear_refs``), and its
model is ``eigensolver_memory(..., warm_start=True)``. The process maps
every allocation above 64 KiB on its own (glibc's
``mallopt(M_MMAP_THRESHOLD)``), so a freed tensor leaves the resident set
at once: the growth of the high-water mark (VmHWM) is the live tensors the
model counts, not heap fragmentation. The table prints bytes per parameter
(the model is linear in ``N``) and the ratio measured / model; the model's
peak phase includes a repair, which these solves do not need.
``tests/linalg/test_basis_dtype.py`` runs the cold worker and checks the
ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

D, BASIS, TOL = 8, 24, 1e-6


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def map_large_allocations() -> None:
    """Serve every allocation above 64 KiB by its own mapping (glibc), so
    that freeing it returns it to the system at once."""
    import ctypes

    if not ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 65536):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: not glibc?")


def high_water(field: str = "VmHWM") -> int:
    """This process's resident high-water mark (VmHWM; or another field of
    ``/proc/self/status`` such as ``VmRSS``) in bytes."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) * 1024


def reset_high_water() -> int:
    """Reset VmHWM to the current resident set (Linux's ``clear_refs`` 5)
    and return that resident set in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return high_water("VmRSS")


def worker(N: int, dtype_name: str, warm: bool = False) -> None:
    """One solve (``warm``: a cold one, then the measured warm-started one);
    prints ``{"grew", "model", "converged", "hvps"}`` as JSON."""
    from curvprobe import top_eigenspace
    from curvprobe.core.operators import LinearOperator
    from curvprobe.linalg import eigensolver_memory

    class Diagonal(LinearOperator):
        def __init__(self, d: torch.Tensor) -> None:
            super().__init__(d.numel())
            self.d = d

        def _matmat(self, V: torch.Tensor) -> torch.Tensor:
            return self.d[:, None] * V

    map_large_allocations()
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    d = torch.cat([torch.linspace(1.0, 0.9, D, dtype=torch.float64),
                   0.85 * torch.rand(N - D, generator=gen, dtype=torch.float64)])
    top_eigenspace(Diagonal(d[:1000].clone()), 2)  # warm up the allocator and kernels
    base = high_water()
    es = top_eigenspace(Diagonal(d), D, tol=TOL, basis_dtype=dtype, basis_size=BASIS)
    if warm:
        d += 1e-3 * torch.rand(N, generator=gen, dtype=torch.float64)
        base = reset_high_water()
        es = top_eigenspace(Diagonal(d), D, tol=TOL, basis_dtype=dtype, basis_size=BASIS, init=es)
    model = eigensolver_memory(N, BASIS, dtype, D=D, warm_start=warm)
    print(json.dumps({"grew": high_water() - base, "model": model, "converged": es.all_converged,
                      "hvps": es.num_matvecs}))


def measure(N: int, dtype_name: str, warm: bool = False) -> dict:
    """Run :func:`worker` in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--worker", str(N), dtype_name, *(["--warm"] * warm)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("N", "DTYPE"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--warm", action="store_true", help="also warm-started solves (with --worker: only)")
    args = parser.parse_args()
    if args.worker:
        return worker(int(args.worker[0]), args.worker[1], args.warm)
    print(f"\n## Eigensolver peak memory: top-{D} at tol {TOL:g}, basis_size {BASIS}, diagonal operator\n")
    print("| N | start | basis | HVPs | converged | measured bytes / N | model bytes / N "
          "| measured / model |")
    print("|---|---|---|---|---|---|---|---|")
    for N in args.sizes:
        for warm in (False, True) if args.warm else (False,):
            for name in ("float64", "float32"):
                row = measure(N, name, warm)
                start = "warm" if warm else "cold"
                print(f"| {N:,} | {start} | {name} | {row['hvps']} | {row['converged']} | "
                      f"{row['grew'] / N:.0f} | {row['model'] / N:.0f} | {row['grew'] / row['model']:.2f} |")


if __name__ == "__main__":
    main()
