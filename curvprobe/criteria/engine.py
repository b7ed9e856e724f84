"""The measurement's arithmetic: per-sample derivatives inside span(U_D).

(Grows into the whole engine: noise streams, all-k increments, surrogate
coefficients, mean ± standard error.)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jacfwd, vmap

from curvprobe.core.problem import Problem


def subspace_derivatives(problem: Problem, U: Tensor, indices: Tensor | list[int] | range,
                         w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample gradients and Hessians inside ``span(U)``.

    With ``f_i(z) = ℓ_i(w + U z)`` for ``U`` (N, D): returns
    ``∇f_i(0) = Uᵀ g_i`` as (n, D) and ``∇²f_i(0) = Uᵀ H_i U`` as
    (n, D, D), float64, for the 0-based sample ``indices`` (n of them) at
    ``w`` (default ``w*``). Computed with ``vmap`` over the samples of each
    chunk (``jacfwd`` over ``grad`` in z), so no per-sample N-vector outlives
    its chunk; chunks hold ``batch_size // D`` samples, so memory stays that
    of one ``batch_size`` chunk's HVP.
    """
    idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices,
                          dtype=torch.long).reshape(-1)
    n = problem.num_samples
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"sample indices must be in [0, {n - 1}]")
    if U.dim() != 2 or U.shape[0] != problem.num_params:
        raise ValueError(f"U must have shape ({problem.num_params}, D), got {tuple(U.shape)}")
    w0, Ud = problem.point(w), U.to(problem.device, problem.dtype)
    D = U.shape[1]
    z0 = torch.zeros(D, dtype=problem.dtype, device=problem.device)

    def f(z: Tensor, target: Tensor, *xs: Tensor) -> Tensor:
        return problem.sample_loss(w0 + Ud @ z, target, *xs)

    in_dims = (None, 0) + (0,) * len(problem.inputs)
    # jacfwd over grad, not over jacrev: torch 2.13's jacfwd(jacrev(.))
    # gets layer_norm's second derivative wrong (pytorch#196700)
    grad_fn = vmap(grad(f), in_dims=in_dims)
    hess_fn = vmap(jacfwd(grad(f)), in_dims=in_dims)
    grads, hessians = [], []
    # D tangents per sample: keep chunk · D per-sample N-vectors ≤ batch_size
    chunk = max(1, problem.batch_size // D)
    for a in range(0, idx.numel(), chunk):
        args = problem.sample_arguments(idx[a:a + chunk])
        grads.append(grad_fn(z0, *args).double())
        hessians.append(hess_fn(z0, *args).double())
    g = torch.cat(grads) if grads else torch.zeros(0, D, dtype=torch.float64)
    H = torch.cat(hessians) if hessians else torch.zeros(0, D, D, dtype=torch.float64)
    return g, 0.5 * (H + H.transpose(1, 2))
