"""Run under ``torchrun --nproc-per-node W``: every data-parallel result of a small problem, saved per rank.

Used by ``test_distributed.py``; not collected by pytest (no ``test_`` prefix).
Usage: ``torchrun --standalone --nproc-per-node 2 distributed_worker.py OUT_DIR``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest

from curvprobe import stabilization, top_eigenspace
from curvprobe.core.distributed import init_from_environment
from curvprobe.criteria.engine import full_space_moments, subspace_derivatives
from curvprobe.results import save

from conftest import mlp_problem


def results(distributed: bool) -> tuple[dict[str, torch.Tensor], object]:
    """Every quantity the test compares, on a 40-sample MLP problem (float64)."""
    problem = mlp_problem(n=40, batch_size=7)
    if distributed:
        problem = type(problem)(problem.model, problem.loss_fn, problem.inputs, problem.targets,
                                batch_size=7, distributed=True)
    gen = torch.Generator().manual_seed(1)
    V = torch.randn(problem.num_params, 3, generator=gen, dtype=torch.float64)
    W = problem.params + 0.01 * torch.randn(5, problem.num_params, generator=gen, dtype=torch.float64)
    es = top_eigenspace(problem.hessian_operator(30), 4, tol=1e-8, seed=0)
    g, H = subspace_derivatives(problem, es.vectors, range(12))
    out = {"loss": problem.loss(k=33), "gradient": problem.gradient(k=33), "hvp": problem.hvp(V, 33),
           "per_sample_losses": problem.per_sample_losses(), "losses_at": problem.per_sample_losses_at(W),
           "eigenvalues": es.values, "subspace_g": g, "subspace_H": H}
    buffer = torch.zeros(problem.num_params, 5, dtype=torch.float64)
    problem.hvp(V, 33, out=buffer[:, 1:4])  # a strided view, reduced across ranks in place
    moments = full_space_moments(problem, 20, 4, seed=0, stream=13, probes_per_unit=2, sketch_size=3)
    out |= {"hvp_into_view": buffer,
            "gm_moments": torch.tensor([moments.c_norm2, moments.trace, moments.frobenius])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = stabilization(problem, [4, 9, 20], sigmas=[1e-2], dims=[1, 3], mc_samples=6, seed=2)
    return out, ds


def main(out_dir: str) -> None:
    shard = init_from_environment("cpu", timeout_s=120)
    torch.set_num_threads(1)
    out, ds = results(distributed=True)
    torch.save(out, Path(out_dir) / f"rank{shard.rank}.pt")
    save(ds.drop_vars(["stage_seconds", "stage"]), Path(out_dir) / f"rank{shard.rank}.nc", overwrite=True)


if __name__ == "__main__":
    main(sys.argv[1])
