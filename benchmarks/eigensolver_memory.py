"""Measured peak memory of an eigensolve against the model ``eigensolver_memory``.

    python benchmarks/eigensolver_memory.py                  # the table
    python benchmarks/eigensolver_memory.py --worker 1000000 float32   # one solve, one JSON line

Each solve runs in a fresh process on a diagonal operator of size ``N``
(8 eigenvalues in [0.9, 1], the rest uniform in [0, 0.85]: the basis fills
and restarts), top-8 at tol 1e-6 with a basis of 24 vectors, after a small
warm-up solve. The process maps every allocation above 64 KiB on its own
(glibc's ``mallopt(M_MMAP_THRESHOLD)``), so a freed tensor leaves the resident
set at once: the growth of the high-water mark (VmHWM) is the live tensors
the model counts, not heap fragmentation. The table prints bytes per
parameter (the model is linear in ``N``) and the ratio measured / model;
the model's peak phase includes a repair, which these solves do not need.
``tests/linalg/test_basis_dtype.py`` runs the worker and checks the ratio.
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


def high_water() -> int:
    """This process's resident high-water mark (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) * 1024


def worker(N: int, dtype_name: str) -> None:
    """One solve; prints ``{"grew", "model", "converged", "hvps"}`` as JSON."""
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
    print(json.dumps({"grew": high_water() - base, "model": eigensolver_memory(N, BASIS, dtype, D=D),
                      "converged": es.all_converged, "hvps": es.num_matvecs}))


def measure(N: int, dtype_name: str) -> dict:
    """Run :func:`worker` in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--worker", str(N), dtype_name], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("N", "DTYPE"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    args = parser.parse_args()
    if args.worker:
        return worker(int(args.worker[0]), args.worker[1])
    print(f"\n## Eigensolver peak memory: top-{D} at tol {TOL:g}, basis_size {BASIS}, diagonal operator\n")
    print("| N | basis | HVPs | converged | measured bytes / N | model bytes / N | measured / model |")
    print("|---|---|---|---|---|---|---|")
    for N in args.sizes:
        for name in ("float64", "float32"):
            row = measure(N, name)
            print(f"| {N:,} | {name} | {row['hvps']} | {row['converged']} | {row['grew'] / N:.0f} | "
                  f"{row['model'] / N:.0f} | {row['grew'] / row['model']:.2f} |")


if __name__ == "__main__":
    main()
