"""The stabilization measurement as a sequence of parts, and their merge into one Dataset.

A :class:`~curvprobe.criteria.spec.StabilizationSpec` names a (k, σ, D,
estimator) grid. :func:`iter_parts` computes it part by part:

- ``fullspace``: the estimators that do not depend on D (``delta1``,
  ``full_mc``, ``sphere``) at every k, one all-k pass per (σ, probe);
- ``subspace_fixed`` (``subspace = "fixed"``): the subspace estimators at
  every k, with one ``U_D`` from ``H^(K)``;
- ``subspace_pooled`` (``subspace = "pooled"``): the same with one ``U_D``
  from the Hessian of all K+1 samples, for every k and ordering;
- ``k_000010``, ... (``subspace = "per_k"``): the subspace estimators at one
  k, ``U_D`` from ``H^(k)``, warm-started from the previous k.

Each part is a small Dataset with the schema of the merged result; the
eigenspace of a per-k part rides along (:attr:`Part.eigenspace`) as the next
k's warm start. :func:`merge_parts` assembles parts into one Dataset, and
:func:`stabilization` is the merge of all parts of one spec. A runner that
stores parts (:func:`curvprobe.app.runs.run_probe`) skips the parts it has and
computes the rest from the same iterator.

With ``orderings = R > 1`` every part is computed for R orderings of the
first K+1 samples at once: the per-sample losses (at ``w*`` and at every
draw) and the per-sample subspace derivatives are computed once and each
ordering permutes them before its prefix sums
(:func:`~curvprobe.criteria.engine.permuted_increments`,
:func:`~curvprobe.criteria.engine.coefficients_from_samples`).

Estimators that do not depend on D are broadcast along ``dim``; ``delta1``
also along ``sigma``. ``sphere`` uses the σ coordinate as its radius ε. Monte
Carlo draws are common random numbers: the same noise for every k (smooth
k-curves), every σ (``z = σ ξ``) and every D (``ξ`` truncated to its first D
entries, ``U_D`` the first D eigenvectors).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from curvprobe.core.problem import Problem
from curvprobe.criteria import engine
from curvprobe.criteria.decomposition import curvature_decomposition
from curvprobe.criteria.spec import (
    ESTIMATORS,
    NOISE_STREAMS,
    POINT,
    SUBSPACE,
    StabilizationSpec,
    mc_samples_argument,
)
from curvprobe.criteria.validity import quadratic_validity, regime_flags
from curvprobe.linalg import Eigenspace, top_eigenspace
from curvprobe.results import provenance

__all__ = ["ORDERING_VARIABLES", "Part", "iter_parts", "merge_parts", "part_name", "part_names",
           "stabilization"]

ORDERING_VARIABLES = ("ordering_mean", "ordering_stderr", "ordering_mc_stderr")
"""The averages over orderings (k, sigma, dim, estimator) of a result with ``orderings > 1``."""


@dataclass(frozen=True)
class Part:
    """One finished piece of a stabilization measurement.

    Attributes
    ----------
    name : str
        ``fullspace``, ``subspace_fixed``, ``subspace_pooled`` or ``k_<k, 6 digits>``.
    dataset : xarray.Dataset
        The part's values, with the schema of :func:`stabilization`'s result.
    eigenspace : Eigenspace or None
        The top-D eigenspace of ``H^(k)`` of a per-k part (the next k's warm start).
    """

    name: str
    dataset: xr.Dataset
    eigenspace: Eigenspace | None = None


def part_name(k: int) -> str:
    """Name of the per-k part at ``k``: ``k_000010`` for k = 10."""
    return f"k_{int(k):06d}"


def part_names(spec: StabilizationSpec) -> list[str]:
    """Every part of ``spec``, in the order :func:`iter_parts` computes them."""
    names = ["fullspace"] if spec.full_space_names else []
    if spec.subspace_names:
        per_k = spec.subspace == "per_k"
        names += [part_name(k) for k in spec.ks] if per_k else [f"subspace_{spec.subspace}"]
    return names


# ------------------------------------------------------------- records of one part
class _Stages:
    """Wall time per named stage of one part (seconds, summed over entries)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


@dataclass
class _Table:
    """Value, standard error and draw count over (k, sigma, dim, estimator[, ordering]), plus
    ``‖c_k‖`` and ``tr B_k`` over (k, dim[, ordering]); with several orderings also the
    ordering mean, its standard error and that error's Monte Carlo part."""

    shape: tuple[int, int, int, int]
    orderings: int = 1
    value: np.ndarray = field(init=False)
    stderr: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    mean_stderr: np.ndarray = field(init=False)
    mc_stderr: np.ndarray = field(init=False)
    c_norm: np.ndarray = field(init=False)
    trace_B: np.ndarray = field(init=False)  # noqa: N815 - the paper's B_k

    def __post_init__(self) -> None:
        R = self.orderings
        self.value = np.full((*self.shape, R), np.nan)
        self.stderr = np.full((*self.shape, R), np.nan)
        self.count = np.zeros(self.shape, dtype=np.int64)
        self.mean = np.full(self.shape, np.nan)
        self.mean_stderr = np.full(self.shape, np.nan)
        self.mc_stderr = np.full(self.shape, np.nan)
        self.c_norm = np.full((self.shape[0], self.shape[2], R), np.nan)
        self.trace_B = np.full((self.shape[0], self.shape[2], R), np.nan)

    def record(self, cell: tuple[int | slice, ...], values: Tensor, stderrs: Tensor,
               integrands: Tensor | None, count: int) -> None:
        """One estimate of every ordering at ``cell`` (k, sigma, dim, estimator indices):
        ``values``, ``stderrs`` (R,), the integrands (R, S) behind them (None: exact)."""
        self.value[cell] = values.cpu().numpy()
        self.stderr[cell] = stderrs.cpu().numpy()
        self.count[cell] = count
        if self.orderings > 1:
            mean, se, mc = engine.ordering_mean_stderr(values, integrands)
            self.mean[cell], self.mean_stderr[cell], self.mc_stderr[cell] = float(mean), float(se), float(mc)


@dataclass
class _EigenRecord:
    """Eigensolver diagnostics over (k, rank) and per k."""

    num_k: int
    D: int
    values: np.ndarray = field(init=False)
    residuals: np.ndarray = field(init=False)
    converged: np.ndarray = field(init=False)
    hvps: np.ndarray = field(init=False)
    cost: np.ndarray = field(init=False)
    miss: np.ndarray = field(init=False)
    certified: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.values = np.full((self.num_k, self.D), np.nan)
        self.residuals = np.full((self.num_k, self.D), np.nan)
        self.converged = np.zeros((self.num_k, self.D), dtype=bool)
        self.hvps = np.zeros(self.num_k, dtype=np.int64)
        self.cost = np.zeros(self.num_k)
        self.miss = np.full(self.num_k, np.nan)
        self.certified = np.zeros(self.num_k, dtype=bool)

    def record(self, j: int, es: Eigenspace, first: bool = True) -> None:
        """Row ``j`` from ``es``; its HVP counts only where it was solved
        (``first``; a fixed subspace serves every k)."""
        self.values[j] = es.values.cpu().numpy()
        self.residuals[j] = es.residuals.cpu().numpy()
        self.converged[j] = (es.residuals <= es.tol).cpu().numpy()  # the residual test
        self.hvps[j] = es.num_matvecs if first else 0
        self.cost[j] = es.cost if first else 0.0
        self.miss[j] = es.miss_probability
        self.certified[j] = es.certified


# ------------------------------------------------------------- the parts
def _full_space_part(problem: Problem, spec: StabilizationSpec, a: Tensor, perms: Tensor,
                     stages: _Stages) -> xr.Dataset:
    """``delta1``, ``full_mc``, ``sphere`` at every k and ordering (all-k engine; ``a`` is (R, len(ks)))."""
    est = spec.full_space_names
    table = _Table((len(spec.ks), len(spec.sigmas), len(spec.dims), len(est)), spec.orderings)
    S = spec.mc_samples
    every = slice(None)
    for i, name in enumerate(est):
        entry = ESTIMATORS[name]
        if entry.space == POINT:
            for j in range(len(spec.ks)):
                table.record((j, every, every, i), a[:, j].abs(), torch.zeros_like(a[:, j]), None, 1)
            continue
        if name in engine.FULL_SPACE_CLOSED_FORMS:
            with stages(f"eval_{name}"):
                _fill_full_space_closed_form(table, i, name, problem, spec, a)
            continue
        power = spec.p if entry.moment == "p" else 1.0
        assert entry.stream is not None
        with stages(f"eval_{name}"):
            for si, sigma in enumerate(spec.sigmas):
                draw = engine.probe_perturbations(engine.FULL_SPACE_PROBES[name](sigma), spec.seed,
                                                  NOISE_STREAMS[entry.stream], problem.num_params,
                                                  problem.device)
                losses = engine.all_k_losses(problem, draw, S, spec.max_k + 1, point_batch=spec.point_batch)
                integrand = engine.moment(engine.permuted_increments(losses, perms, spec.ks), power)
                per = [engine.mean_stderr(x) for x in integrand]  # per ordering, (len(ks),) each
                m, se = torch.stack([p[0] for p in per]), torch.stack([p[1] for p in per])
                for j in range(len(spec.ks)):
                    table.record((j, si, every, i), m[:, j], se[:, j], integrand[..., j], S)
    return _dataset(problem, spec, spec.ks, est, table, _EigenRecord(len(spec.ks), spec.max_dim), a,
                    stages)


def _fill_full_space_closed_form(table: _Table, i: int, name: str, problem: Problem,
                                 spec: StabilizationSpec, a: Tensor) -> None:
    """A full-space closed form (``gm_full``) at every k and σ: its moments
    from ``mc_samples`` HVP products per k (one ordering: ``a`` is (1, len(ks)))."""
    stream = ESTIMATORS[name].stream
    assert stream is not None
    for j, k in enumerate(spec.ks):
        moments = engine.full_space_moments(problem, k, spec.mc_samples, spec.seed, NOISE_STREAMS[stream])
        for si, sigma in enumerate(spec.sigmas):
            offset, integrand = engine.FULL_SPACE_CLOSED_FORMS[name](moments, float(a[0, j]), sigma)
            value, se = engine.estimate((offset, integrand))
            table.record((j, si, slice(None), i), torch.tensor([value], dtype=torch.float64),
                         torch.tensor([se], dtype=torch.float64), None,
                         0 if integrand is None else integrand.numel())


def _fill_subspace(table: _Table, j: int, coeffs: Sequence[engine.SubspaceCoefficients], xi: Tensor,
                   deltas: dict[tuple[int, int], Tensor], spec: StabilizationSpec) -> None:
    """Every subspace estimator at k index ``j`` from the coefficients of each ordering
    (``coeffs``, R of them) and the draws; ``deltas[(σ, D)]`` is (R, S)."""
    est = spec.subspace_names
    for di, D in enumerate(spec.dims):
        for r, coeff in enumerate(coeffs):
            c, B = coeff.terms(D)
            table.c_norm[j, di, r], table.trace_B[j, di, r] = float(c.norm()), float(torch.trace(B))
        for si, sigma in enumerate(spec.sigmas):
            z = sigma * xi[:, :D]
            terms = [[engine.SUBSPACE_CELLS[name](_draws(coeff, D, sigma, z, deltas.get((si, di)), r, spec.p))
                      for name in est] for r, coeff in enumerate(coeffs)]
            for i, name in enumerate(est):
                estimates = [engine.estimate(terms[r][i]) for r in range(len(coeffs))]
                values = torch.tensor([e[0] for e in estimates], dtype=torch.float64)
                stderrs = torch.tensor([e[1] for e in estimates], dtype=torch.float64)
                integrands = [terms[r][i][1] for r in range(len(coeffs))]
                closed = ESTIMATORS[name].method == "closed_form"
                table.record((j, si, di, i), values, stderrs,
                             None if integrands[0] is None else torch.stack(integrands),  # type: ignore[arg-type]
                             1 if closed else len(z))


def _draws(coeff: engine.SubspaceCoefficients, D: int, sigma: float, z: Tensor, delta: Tensor | None,
           r: int, p: float) -> engine.SubspaceDraws:
    """What the subspace estimators see at one (k, σ, D) in ordering r."""
    a = torch.as_tensor(coeff.a, dtype=torch.float64, device=coeff.c.device)
    c, B = coeff.terms(D)
    return engine.SubspaceDraws(a, c, B, sigma, z, engine.surrogate_values(a, c, B, z),
                                None if delta is None else delta[r], p)


def _one_subspace_part(problem: Problem, spec: StabilizationSpec, a: Tensor, perms: Tensor, xi: Tensor,
                       init: Eigenspace | Tensor | None, stages: _Stages) -> xr.Dataset:
    """The subspace estimators at every k (and ordering) inside one ``U_D``: of ``H^(K)``
    (``fixed``) or of the Hessian of all K+1 samples (``pooled``, ordering-invariant).

    Per-sample ``U_Dᵀ g_i``, ``U_Dᵀ H_i U_D`` (i ≤ K+1) and per-sample losses
    at the subspace draws are computed once; each ordering permutes them
    before the prefix sums.
    """
    K = spec.max_k
    table = _Table((len(spec.ks), len(spec.sigmas), len(spec.dims), len(spec.subspace_names)), spec.orderings)
    with stages("subspace"):
        rows = K + 1 if spec.subspace == "pooled" else K
        es = top_eigenspace(problem.hessian_operator(rows), spec.max_dim, init=init,
                            tol=spec.tol, seed=spec.seed, **spec.eigen_options)
    with stages("assembly"):
        g, H = engine.subspace_derivatives(problem, es.vectors, range(K + 1))
        coeffs = [engine.coefficients_from_samples(spec.ks, a[r], g[perm], H[perm], es.vectors)
                  for r, perm in enumerate(perms)]
    eig = _EigenRecord(len(spec.ks), spec.max_dim)
    for j in range(len(spec.ks)):
        eig.record(j, es, first=j == 0)
    deltas: dict[tuple[int, int], Tensor] = {}
    if spec.needs_true_increments:
        with stages("eval_direct_mc"):
            losses = engine.subspace_losses(problem, es.vectors, xi, spec.sigmas, spec.dims, K + 1,
                                            point_batch=spec.point_batch)
            deltas = {key: engine.permuted_increments(v, perms, spec.ks) for key, v in losses.items()}
    with stages("eval_surrogate"):
        for j in range(len(spec.ks)):
            _fill_subspace(table, j, [c[j] for c in coeffs], xi,
                           {key: v[..., j] for key, v in deltas.items()}, spec)
    return _dataset(problem, spec, spec.ks, spec.subspace_names, table, eig, a, stages)


def _per_k_part(problem: Problem, spec: StabilizationSpec, j: int, a: Tensor, xi: Tensor,
                grad_sum: Tensor, es: Eigenspace, stages: _Stages) -> xr.Dataset:
    """The subspace estimators at ``k = ks[j]`` inside the eigenspace ``es`` of ``H^(k)``
    (one ordering: ``a`` is (1, len(ks)))."""
    k = spec.ks[j]
    table = _Table((1, len(spec.sigmas), len(spec.dims), len(spec.subspace_names)))
    eig = _EigenRecord(1, spec.max_dim)
    eig.record(0, es)
    with stages("assembly"):
        coeff = engine.coefficients_per_k(problem, k, float(a[0, j]), es, grad_sum)
    deltas: dict[tuple[int, int], Tensor] = {}
    if spec.needs_true_increments:
        with stages("eval_direct_mc"):
            deltas = {key: v[:, 0][None] for key, v in engine.subspace_increments(
                problem, es.vectors, xi, spec.sigmas, spec.dims, [k], point_batch=spec.point_batch).items()}
    with stages("eval_surrogate"):
        _fill_subspace(table, 0, [coeff], xi, deltas, spec)
    return _dataset(problem, spec, [k], spec.subspace_names, table, eig, a[:, j:j + 1], stages)


def iter_parts(problem: Problem, spec: StabilizationSpec, *, skip: Collection[str] = (),
               init: Eigenspace | Tensor | None = None) -> Iterator[Part]:
    """Compute the parts of ``spec`` on ``problem`` one at a time, in :func:`part_names` order.

    Parameters
    ----------
    problem : Problem
        Ordered samples; needs ``max(ks) + 1`` of them.
    spec : StabilizationSpec
        What to measure.
    skip : collection of str
        Names of parts not to compute (a runner has them already).
    init : Eigenspace or Tensor (N, p), optional
        Warm start of the first eigenspace computed (``per_k``: of the first k
        not skipped — a resumed run passes the eigenvectors of the k before;
        ``fixed``: of ``H^(K)``; ``pooled``: of the Hessian of the K+1 samples).

    Yields
    ------
    Part
        Each finished part; per-k parts carry their eigenspace. With
        ``spec.resumable`` a per-k part depends on the parts before it only
        through the D eigenvectors of the previous k (float64, on the CPU),
        which is what a runner stores: interrupted and uninterrupted runs then
        give identical parts.
    """
    spec.check_problem(problem.num_samples, problem.num_params)
    perms = engine.orderings(spec.orderings, spec.max_k + 1, spec.ordering_seed)
    first = _Stages()  # the first part computed carries the time of a
    with first("losses_at_w_star"):  # a (R, len(ks)): a_k of every ordering
        a = engine.permuted_increments(problem.per_sample_losses(stop=spec.max_k + 1), perms, spec.ks)

    pending: list[_Stages] = [first]

    def stages() -> _Stages:
        return pending.pop() if pending else _Stages()

    if spec.full_space_names and "fullspace" not in skip:
        yield Part("fullspace", _full_space_part(problem, spec, a, perms, stages()))
    if not spec.subspace_names:
        return
    xi = engine.noise(spec.seed, NOISE_STREAMS["subspace"], 0, (spec.mc_samples, spec.max_dim),
                      problem.device)
    if spec.subspace != "per_k":
        name = f"subspace_{spec.subspace}"
        if name not in skip:
            yield Part(name, _one_subspace_part(problem, spec, a, perms, xi, init, stages()))
        return
    grad_sum = torch.zeros(problem.num_params, dtype=torch.float64, device=problem.device)
    done, previous = 0, init
    for j, k in enumerate(spec.ks):
        if part_name(k) in skip:
            continue
        timer = stages()
        with timer("assembly"):
            if spec.resumable:  # from scratch: independent of which parts were skipped
                grad_sum = problem.gradient(k=k) * k
            elif k > done:
                grad_sum += problem.gradient(k=k, start=done) * (k - done)
                done = k
        keep_basis = not spec.resumable and j + 1 < len(spec.ks)
        with timer("subspace"):
            es = top_eigenspace(problem.hessian_operator(k), spec.max_dim, init=previous, tol=spec.tol,
                                seed=spec.seed, **{"keep_basis": keep_basis, **spec.eigen_options})
        yield Part(part_name(k), _per_k_part(problem, spec, j, a, xi, grad_sum, es, timer), es)
        previous = es.vectors.detach().to("cpu", torch.float64) if spec.resumable else es


# ------------------------------------------------------------- Datasets
def _variables(spec: StabilizationSpec, est: Sequence[str], table: _Table, eig: _EigenRecord,
               a: Tensor, stages: _Stages) -> dict[str, Any]:
    dims4 = ("k", "sigma", "dim", "estimator")
    several = spec.orderings > 1
    per = ("ordering",) if several else ()

    def one(x: np.ndarray) -> np.ndarray:  # one ordering: no ordering dimension
        return x if several else x[..., 0]

    value_name = "criterion estimate of each ordering" if several else "criterion estimate"
    return {
        "value": (dims4 + per, one(table.value),
                  {"long_name": f"{value_name} (per estimator: what it estimates in the "
                                "estimator_long_name coordinate, its units in estimator_units)"}),
        "stderr": (dims4 + per, one(table.stderr),
                   {"long_name": "Monte Carlo standard error (units of value)"}),
        "mc_samples": (dims4, table.count, {"long_name": "Monte Carlo draws S", "units": "1"}),
        **(_ordering_variables(spec, table) if several else {}),
        "a": (("k", *per), one(a.T.cpu().numpy()), {"long_name": "a_k = δ_k(w*)", "units": "loss"}),
        "c_norm": (("k", "dim", *per), one(table.c_norm), {"long_name": "‖c_k‖", "units": "loss/param"}),
        "trace_B": (("k", "dim", *per), one(table.trace_B), {"long_name": "tr B_k", "units": "loss/param²"}),
        "eigenvalues": (("k", "rank"), eig.values, {"long_name": "top eigenvalues of H^(k)",
                                                     "units": "loss/param²"}),
        "residuals": (("k", "rank"), eig.residuals,
                      {"long_name": "relative residual ‖Hu−θu‖/|θ₁|", "units": "1"}),
        "converged": (("k", "rank"), eig.converged,
                      {"long_name": "converged eigenpair: relative residual ≤ tol"}),
        "certified": (("k",), eig.certified,
                      {"long_name": "eigenspace certified: every pair converged, no missed eigenvalue "
                                    "found and the guard's miss probability ≤ the miss_bound attr"}),
        "hvps": (("k",), eig.hvps, {"long_name": "Hessian-vector products of the eigensolver",
                                    "units": "1"}),
        "hvp_cost": (("k",), eig.cost,
                     {"long_name": "eigensolver work in full-HVP equivalents (a carried basis adds "
                                   "HVPs on the new samples: (k − k0)/k each)", "units": "1"}),
        "miss_probability": (("k",), eig.miss,
                             {"long_name": "bound on the probability that an eigenvalue above "
                                           "θ_D + tol·|θ₁| went unseen by the eigensolver's guard",
                              "units": "1"}),
        "stage_seconds": (("stage",), np.array(list(stages.seconds.values()), dtype=float),
                          {"long_name": "wall time per stage", "units": "s"}),
    }


def _ordering_variables(spec: StabilizationSpec, table: _Table) -> dict[str, Any]:
    """The averages over orderings and the orderings themselves (R > 1)."""
    dims4 = ("k", "sigma", "dim", "estimator")
    perms = engine.orderings(spec.orderings, spec.max_k + 1, spec.ordering_seed).numpy()
    return {
        "ordering_mean": (dims4, table.mean, {"long_name": "mean of value over the orderings "
                                                            "(units of value)"}),
        "ordering_stderr": (dims4, table.mean_stderr, {
            "long_name": "standard error of ordering_mean: sqrt(var over orderings / R + "
                         "ordering_mc_stderr²) (units of value)"}),
        "ordering_mc_stderr": (dims4, table.mc_stderr, {
            "long_name": "Monte Carlo part of ordering_stderr: standard error over the draws of "
                         "the ordering-averaged integrand (units of value)"}),
        "permutation": (("ordering", "position"), perms, {
            "long_name": "0-based index of the problem's sample at each position of ordering r "
                         "(ordering 0: the given order)", "units": "1"}),
    }


def _dataset(problem: Problem, spec: StabilizationSpec, ks: Sequence[int], est: Sequence[str],
             table: _Table, eig: _EigenRecord, a: Tensor, stages: _Stages) -> xr.Dataset:
    """One part as a Dataset (the schema of :func:`stabilization`'s result)."""
    coords = {
        "k": ("k", np.asarray(ks, dtype=np.int64), {"long_name": "sample count of L_k"}),
        "sigma": ("sigma", np.asarray(spec.sigmas, dtype=float),
                  {"long_name": "probe scale σ (sphere: radius ε)", "units": "param"}),
        "dim": ("dim", np.asarray(spec.dims, dtype=np.int64), {"long_name": "subspace dimension D"}),
        "estimator": ("estimator", np.asarray(est, dtype=str)),
        "estimator_units": ("estimator", np.asarray([ESTIMATORS[e].units(spec.p) for e in est], dtype=str),
                            {"long_name": "units of value and stderr"}),
        "estimator_long_name": ("estimator", np.asarray([ESTIMATORS[e].long_name for e in est], dtype=str),
                                {"long_name": "what each estimator estimates (registry ESTIMATORS)"}),
        "rank": ("rank", np.arange(1, eig.D + 1, dtype=np.int64)),
        "stage": ("stage", np.asarray(list(stages.seconds), dtype=str)),
    }
    if spec.orderings > 1:
        coords["ordering"] = ("ordering", np.arange(spec.orderings, dtype=np.int64),
                              {"long_name": "sample ordering (0: the given order)"})
        coords["position"] = ("position", np.arange(1, spec.max_k + 2, dtype=np.int64),
                              {"long_name": "position i of a sample in an ordering (1-based)"})
    note = {"fixed": "one U_D from H^(K) for all k (fixed)",
            "pooled": "one U_D from the Hessian of all K+1 samples for all k and orderings (pooled)",
            }.get(str(spec.subspace), "U_D from H^(k) for each k, warm-started")
    return xr.Dataset(_variables(spec, est, table, eig, a, stages), coords=coords,
                      attrs={**provenance(problem), "measurement": "stabilization", **spec.attrs(),
                             "subspace_note": note, "miss_bound": miss_bound(spec)})


def miss_bound(spec: StabilizationSpec) -> float:
    """The miss bound the eigenspaces are certified at: ``max_miss_probability``
    of ``spec.eigen_options``, NaN when none is stated (nothing is certified)."""
    bound = spec.eigen_options.get("max_miss_probability")
    return math.nan if bound is None else float(bound)


def _certificate_attrs(merged: xr.Dataset) -> None:
    """Set ``eigen_certified`` (1: every eigenspace certified at the
    ``miss_bound`` attr, 0: not, or no bound stated) and warn when a pair did
    not converge or, at a stated bound, an eigenspace is not certified."""
    bound = float(merged.attrs.get("miss_bound", math.nan))
    certified = "certified" in merged and bool(merged["certified"].all())
    merged.attrs["eigen_certified"] = int(certified)
    if not bool(merged["converged"].all()):
        warnings.warn("some eigenpairs are not converged (see the 'converged' variable)", stacklevel=3)
    elif math.isfinite(bound) and not certified:
        warnings.warn(f"the eigenspace is not certified at miss probability ≤ {bound:g} (see the "
                      "'certified' and 'miss_probability' variables)", stacklevel=3)


def _stage_seconds(ds: xr.Dataset) -> dict[str, float]:
    if "stage_seconds" not in ds:
        return {}
    return {str(s): float(v) for s, v in zip(ds["stage"].values, ds["stage_seconds"].values)}


def _is_subspace_part(ds: xr.Dataset) -> bool:
    return any(ESTIMATORS[str(e)].space == SUBSPACE for e in ds["estimator"].values)


def merge_parts(parts: Sequence[xr.Dataset], estimators: Sequence[str] | None = None, *,
                validity: xr.Dataset | None = None) -> xr.Dataset:
    """One stabilization Dataset from its parts (in :func:`part_names` order, any subset of kinds).

    Per-k parts are concatenated along ``k``; the full-space part and the
    subspace parts are then concatenated along ``estimator`` (in the order
    ``estimators``, default that of the parts). Eigensolver diagnostics and
    surrogate coefficients come from the subspace parts, ``a`` from the
    full-space part when there is one (computed once for every k);
    ``stage_seconds`` is summed per stage over all parts; at p = 2 the
    curvature part and the captured fraction are added
    (:func:`~curvprobe.criteria.decomposition.curvature_decomposition`). ``validity`` (a
    :func:`~curvprobe.criteria.validity.quadratic_validity` Dataset) adds the
    regime flags. Warns once if a subspace estimate rests on an uncertified
    eigenpair.
    """
    if not parts:
        raise ValueError("nothing to merge")
    stages: dict[str, float] = {}
    for ds in parts:
        for stage, seconds in _stage_seconds(ds).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    # estimator_long_name: parts written before it existed lack it; then the merge leaves it out
    described = all("estimator_long_name" in ds.coords for ds in parts)
    drop = ["stage_seconds", "stage"] + ([] if described else ["estimator_long_name"])
    stripped = [ds.drop_vars(drop, errors="ignore") for ds in parts]
    full = [ds for ds in stripped if not _is_subspace_part(ds)]
    subs = [ds for ds in stripped if _is_subspace_part(ds)]
    sub = None
    if subs:
        sub = subs[0] if len(subs) == 1 else xr.concat(subs, dim="k", combine_attrs="override")
    per_estimator = ["value", "stderr", "mc_samples", "estimator_units"]
    per_estimator += ["estimator_long_name"] if described else []
    per_estimator += [v for v in ORDERING_VARIABLES if v in subs[0]] if subs else []
    if full and sub is not None:
        values = xr.concat([full[0][per_estimator], sub[per_estimator]], dim="estimator")
        merged = sub.drop_vars(per_estimator).drop_vars("estimator").assign(a=full[0]["a"])
        merged = xr.merge([merged, values], combine_attrs="override")
        merged.attrs = {**full[0].attrs, **sub.attrs}
    else:
        merged = full[0] if sub is None else sub
    order = list(estimators) if estimators is not None else list(merged["estimator"].values)
    merged = merged.sel(estimator=[e for e in order if e in merged["estimator"].values])
    merged["estimator"] = merged["estimator"].astype(str)
    for variable in merged.variables.values():
        variable.encoding = {}  # file encodings of the parts (string widths...) do not carry over
    merged = merged.assign_coords(stage=("stage", np.asarray(list(stages), dtype=str)))
    merged = merged.assign(stage_seconds=("stage", np.array(list(stages.values()), dtype=float),
                                          {"long_name": "wall time per stage, summed over parts",
                                           "units": "s"}))
    if sub is not None:
        _certificate_attrs(merged)
    merged = curvature_decomposition(merged)
    return regime_flags(merged, validity) if validity is not None else merged


def stabilization(problem: Problem, ks: Sequence[int], *, sigmas: Sequence[float],
                  dims: Sequence[int] = (1, 4, 16), estimators: Sequence[str] | None = None,
                  mc_samples: int = 64, subspace: str | None = None, seed: int = 0, tol: float = 1e-3,
                  p: float = 2, validity: xr.Dataset | bool | None = None, point_batch: int = 8,
                  eigen_kwargs: dict | None = None, progress: bool = False,
                  init: Eigenspace | Tensor | None = None,
                  on_k: Callable[[int, int, Eigenspace], None] | None = None,
                  num_samples: int | None = None, orderings: int = 1,
                  ordering_seed: int = 0) -> xr.Dataset:
    """Stabilization criteria over a k grid: the merge of every part of one spec.

    Parameters
    ----------
    problem : Problem
        Ordered samples; needs ``max(ks) + 1`` of them.
    ks, sigmas, dims, estimators, mc_samples, subspace, seed, tol, p, point_batch, orderings, ordering_seed
        The fields of :class:`~curvprobe.criteria.spec.StabilizationSpec`
        (``estimators`` None: every default estimator defined at ``p``;
        ``subspace`` None: ``per_k`` with one ordering, ``pooled`` with several).
    validity : Dataset, True or None
        A :func:`curvprobe.quadratic_validity` result, True to compute one at
        ``k = max(ks)``, or None. σ beyond the validated regime get
        ``outside_validated_regime`` True and a warning for ``gm``/``quad_mc``.
    eigen_kwargs : dict, optional
        Extra keywords of :func:`curvprobe.top_eigenspace`. ``per_k`` keeps
        each k's Lanczos basis to carry it to the next k (memory 2 × N ×
        basis_size float64); ``{"keep_basis": False}`` turns that off.
    progress : bool
        A progress bar over the parts (stderr).
    init : Eigenspace or Tensor (N, p), optional
        Warm start of the first eigenspace (``per_k``: of the first k;
        ``fixed``: of ``H^(K)``).
    on_k : callable ``on_k(j, k, eigenspace)``, optional
        Called after each finished k of ``subspace="per_k"``.
    num_samples : int, optional
        Deprecated name of ``mc_samples``.

    Returns
    -------
    xarray.Dataset
        Dims ``k``, ``sigma``, ``dim``, ``estimator``: ``value``, ``stderr``
        (units per estimator in the ``estimator_units`` coordinate: loss^p,
        or loss for ``delta1`` and ``sphere``) and ``mc_samples``; per-k
        eigensolver diagnostics over (``k``, ``rank``): ``eigenvalues``,
        ``residuals``, ``converged`` (residual ≤ tol); ``hvps``, ``hvp_cost``,
        ``miss_probability``, ``certified`` (k: ≤ the ``miss_bound`` attr, the
        stated ``max_miss_probability`` or NaN; attr ``eigen_certified``); the
        surrogate coefficients ``a`` (k), ``c_norm`` and ``trace_B`` (k, dim);
        ``stage_seconds`` over ``stage``; the spec and provenance as attrs. At p = 2 also the curvature part
        (:func:`~curvprobe.criteria.decomposition.curvature_decomposition`).
        With ``orderings = R > 1``: ``value``, ``stderr``, ``a``, ``c_norm``
        and ``trace_B`` gain an ``ordering`` dimension (ordering 0 is the
        given order), and ``ordering_mean``, ``ordering_stderr``,
        ``ordering_mc_stderr`` (k, sigma, dim, estimator) hold the average over
        the orderings (:func:`curvprobe.criteria.engine.ordering_mean_stderr`),
        ``permutation`` (ordering, position) the orderings themselves.
    """
    mc_samples = mc_samples_argument(mc_samples, num_samples, "stabilization")
    spec = StabilizationSpec(ks=tuple(ks), sigmas=tuple(sigmas), dims=tuple(dims),
                             estimators=None if estimators is None else tuple(estimators),
                             mc_samples=mc_samples, p=p, subspace=subspace, seed=seed, tol=tol,
                             point_batch=point_batch, eigen_options=eigen_kwargs or {},
                             orderings=orderings, ordering_seed=ordering_seed)
    spec.check_problem(problem.num_samples, problem.num_params)
    if validity is True:
        validity = quadratic_validity(problem, spec.sigmas, k=spec.max_k, seed=seed)
    from tqdm import tqdm

    datasets = []
    with tqdm(total=len(part_names(spec)), desc="stabilization parts", disable=not progress,
              leave=False) as bar:
        for part in iter_parts(problem, spec, init=init):
            datasets.append(part.dataset)
            if on_k is not None and part.eigenspace is not None:
                k = int(part.dataset["k"].values[0])
                on_k(spec.ks.index(k), k, part.eigenspace)
            bar.update(1)
    return merge_parts(datasets, spec.estimators,
                       validity=validity if isinstance(validity, xr.Dataset) else None)

