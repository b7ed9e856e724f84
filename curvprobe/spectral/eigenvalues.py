"""Per-layer (per-parameter-group) eigenvalues of the Hessian or the Gauss–Newton matrix.

For a group ``B`` of parameters (a layer's weight and bias, say) the block

    H_BB = ∇²_B L_k(w),   L_k = (1/k) Σ_{i≤k} ℓ_i,

is the Hessian of the mean loss with respect to those parameters alone, the
others held at ``w`` (default ``w*``): exactly the (B, B) submatrix of the full
Hessian, applied without forming anything outside it
(:meth:`~curvprobe.core.problem.Problem.hessian_operator` with ``params``).
With ``operator="ggn"`` the block of the generalized Gauss–Newton matrix
(:meth:`~curvprobe.core.problem.Problem.ggn_operator`) instead.

:func:`layer_eigenvalues` solves every group's block for its ``D`` extreme
eigenpairs with :func:`~curvprobe.linalg.eigensolver.top_eigenspace` — the
same certificate per group: relative residuals ``‖H_BB u − θ u‖ / s ≤ tol``
and the missed-eigenvalue guard (``docs/concepts.md``). A group of at most
``dense_max`` parameters is solved densely instead: its ``|B|`` columns in one
batched product, then ``eigh``; its residuals are computed from those exact
products, and nothing can be missed (``miss_probability = 0``).

Groups (``layers``):

* ``None`` (default): one group per module that holds trainable parameters
  directly (its weight and bias), named by the module's path (``"(root)"``
  for the model itself);
* ``"parameters"``: one group per parameter tensor;
* a sequence of names or shell globs: one group each, named by the pattern;
* a mapping ``label → spec``, each spec anything ``params`` accepts (a name,
  a glob, several, a module, a predicate on names).

The result is an ``xarray.Dataset`` over ``(layer, rank)``; rank 1 is the
most extreme eigenvalue at the requested end (the largest for ``"largest"``,
``"both_ends"`` and ``"magnitude"`` sort decreasing; ``"smallest"`` sorts
increasing). Ranks beyond a group's size are NaN and not converged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from curvprobe.core.operators import LinearOperator, ParameterSpec, parameter_block
from curvprobe.core.problem import Problem
from curvprobe.linalg import top_eigenspace
from curvprobe.results import provenance

__all__ = ["OPERATORS", "layer_eigenvalues", "layer_groups"]

OPERATORS = ("hessian", "ggn")
"""Valid values of ``layer_eigenvalues(operator=...)``."""


def layer_groups(problem: Problem, layers: str | Sequence[str] | Mapping[str, ParameterSpec] | None
                 ) -> dict[str, ParameterSpec]:
    """The parameter groups of ``layers`` (module docstring) as ``label → spec``."""
    if layers is None:
        groups: dict[str, list[str]] = {}
        for name in problem.param_names:
            owner = name.rpartition(".")[0] or "(root)"
            groups.setdefault(owner, []).append(name)
        return {label: tuple(names) for label, names in groups.items()}
    if isinstance(layers, str):
        if layers != "parameters":
            return {layers: layers}
        return {name: name for name in problem.param_names}
    if isinstance(layers, Mapping):
        return dict(layers)
    return {pattern: pattern for pattern in layers}


def _dense_solve(op: LinearOperator, D: int, which: str, tol: float) -> dict[str, Any]:
    """All eigenpairs of a small block from its ``n`` columns (one batched
    product), the ``D`` selected ones with residuals from those products."""
    n = op.shape[0]
    A = op.matmat(torch.eye(n, dtype=torch.float64, device=op.device))
    A = 0.5 * (A + A.T)
    theta, U = torch.linalg.eigh(A)
    scale = float(theta.abs().max()) or 1.0
    order = _selection(theta, min(D, n), which)
    res = (A @ U[:, order] - U[:, order] * theta[order]).norm(dim=0) / scale
    return {"values": theta[order], "residuals": res, "converged": res <= tol, "num_matvecs": n,
            "miss_probability": 0.0, "scale": scale, "method": "dense"}


def _selection(theta: Tensor, D: int, which: str) -> Tensor:
    """Indices of the ``D`` eigenvalues ``which`` selects from ``theta``
    (ascending), in the order of the result's ranks."""
    n = theta.numel()
    if which == "largest":
        return torch.arange(n - 1, n - 1 - D, -1)
    if which == "smallest":
        return torch.arange(D)
    if which == "both_ends":
        chosen = torch.cat([torch.arange(n - 1, n - 1 - (D + 1) // 2, -1), torch.arange(D // 2)])
    else:
        chosen = theta.abs().argsort(descending=True, stable=True)[:D]
    return chosen[theta[chosen].argsort(descending=True)]


def _krylov_solve(op: LinearOperator, D: int, which: str, tol: float, solver: dict) -> dict[str, Any]:
    """The block's ``D`` pairs by :func:`top_eigenspace` (rank order as the module docstring)."""
    es = top_eigenspace(op, D, tol=tol, which=which, **solver)
    order = torch.arange(es.D - 1, -1, -1) if which == "smallest" else torch.arange(es.D)
    return {"values": es.values[order], "residuals": es.residuals[order], "converged": es.converged[order],
            "num_matvecs": es.num_matvecs, "miss_probability": es.miss_probability, "scale": es.scale,
            "method": es.method}


def layer_eigenvalues(problem: Problem, D: int = 4, *,
                      layers: str | Sequence[str] | Mapping[str, ParameterSpec] | None = None,
                      k: int | None = None, w: Tensor | None = None, tol: float = 1e-3,
                      which: str = "largest", operator: str = "hessian", dense_max: int | None = None,
                      **solver: Any) -> xr.Dataset:
    """``D`` certified eigenvalues of every layer's block of the Hessian (or GGN).

    Parameters
    ----------
    problem : Problem
    D : int
        Eigenvalues per group.
    layers : None, "parameters", sequence of names/globs, or mapping label → spec
        The groups (module docstring).
    k, w :
        Samples ``[0, k)`` (default all) and the point (default ``w*``).
    tol : float
        Relative residual of every pair (as :func:`top_eigenspace`).
    which : {"largest", "smallest", "both_ends", "magnitude"}
    operator : {"hessian", "ggn"}
    dense_max : int, optional
        Groups of at most this many parameters are solved densely (default
        ``D + 50``: fewer products than a Krylov solve with its guard).
    **solver :
        Further arguments of :func:`top_eigenspace` (``method``, ``seed``,
        ``guard_steps``, ``basis_dtype``, …).

    Returns
    -------
    xarray.Dataset
        ``eigenvalue``, ``residual`` and ``converged`` over ``(layer, rank)``;
        ``num_params``, ``num_matvecs``, ``miss_probability``, ``scale``,
        ``method`` and ``parameters`` (comma-separated names) over ``layer``;
        provenance attrs.
    """
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; valid: {', '.join(OPERATORS)}")
    if isinstance(D, bool) or int(D) != D or D < 1:
        raise ValueError(f"D must be an integer >= 1, got {D!r}")
    limit = D + 50 if dense_max is None else int(dense_max)
    make = problem.hessian_operator if operator == "hessian" else problem.ggn_operator
    rows, labels, names = [], [], []
    for label, spec in layer_groups(problem, layers).items():
        block = parameter_block(problem.model, problem.layer_slices(), spec)
        op = make(k, w, params=block.names)
        n = op.shape[0]
        dense = n <= max(limit, D)
        row = _dense_solve(op, D, which, tol) if dense else _krylov_solve(op, D, which, tol, solver)
        rows.append({**row, "num_params": n})
        labels.append(label)
        names.append(",".join(block.names))
    return _dataset(problem, rows, labels, names, D, attrs={
        "k": problem.num_samples if k is None else int(k), "tol": tol, "which": which,
        "operator": operator, "dense_max": limit})


def _padded(values: Tensor, D: int, fill: float | bool) -> np.ndarray:
    out = np.full(D, fill, dtype=type(fill))
    out[: values.numel()] = values.detach().cpu().numpy()
    return out


def _dataset(problem: Problem, rows: list[dict[str, Any]], labels: list[str], names: list[str], D: int,
             attrs: dict[str, Any]) -> xr.Dataset:
    """The (layer, rank) Dataset of the per-group solves."""
    dims, per_layer = ("layer", "rank"), ("layer",)
    return xr.Dataset(
        {"eigenvalue": (dims, np.stack([_padded(r["values"], D, math.nan) for r in rows]),
                        {"long_name": "eigenvalue of the layer's block", "units": "loss/param^2"}),
         "residual": (dims, np.stack([_padded(r["residuals"], D, math.nan) for r in rows]),
                      {"long_name": "‖H_BB u − θ u‖ / scale", "units": "1"}),
         "converged": (dims, np.stack([_padded(r["converged"], D, False) for r in rows]),
                       {"long_name": "residual ≤ tol and the guard passed"}),
         "num_params": (per_layer, np.array([r["num_params"] for r in rows]),
                        {"long_name": "parameters in the group"}),
         "num_matvecs": (per_layer, np.array([r["num_matvecs"] for r in rows]),
                         {"long_name": "operator products of the group's solve"}),
         "miss_probability": (per_layer, np.array([r["miss_probability"] for r in rows], dtype=float),
                              {"long_name": "bound on the probability that an eigenvalue was missed"}),
         "scale": (per_layer, np.array([r["scale"] for r in rows], dtype=float),
                   {"long_name": "residual scale s", "units": "loss/param^2"}),
         "method": (per_layer, np.array([r["method"] for r in rows])),
         "parameters": (per_layer, np.array(names))},
        coords={"layer": labels, "rank": np.arange(1, D + 1)},
        attrs=provenance(problem, **attrs))
