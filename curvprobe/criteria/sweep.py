"""Stabilization criteria Δ_p over a grid of sample counts k (DESIGN.md §2–§3).

Notation: ``δ_k(w) = L_{k+1}(w) − L_k(w) = (ℓ_{k+1}(w) − L_k(w)) / (k+1)``
(the exact increment identity; two rounded means are never subtracted), and
``Δ_p(k+1) = E_{w~q} |δ_k(w)|^p`` for a probing law ``q`` (:mod:`probes`).

Estimators (``estimator`` coordinate of the result):

| name | estimates | how |
|---|---|---|
| ``delta1`` | Δ₁ = \\|δ_k(w*)\\| | Dirac probe, exact |
| ``full_mc`` | Δ_p, ``w = w* + ε``, ε ~ N(0, σ² I_N) | Monte Carlo, all-k engine |
| ``sphere`` | E \\|δ_k(w* + ε d)\\|, ‖d‖ = 1, ε = σ | Monte Carlo (smoothed Δ₁), all-k engine |
| ``direct_mc`` | Δ_p^(D), ``w = w* + U_D z``, z ~ N(0, σ² I_D) | Monte Carlo of the true δ_k |
| ``quad_mc`` | surrogate E \\|q_k(z)\\|^p | Monte Carlo of ``q_k`` (same z) |
| ``gm`` | surrogate E q_k(z)² | closed form (p = 2 only) |
| ``cv_mc`` | Δ₂^(D) | ``GM + mean(δ_k(w_s)² − q_k(z_s)²)``, same z (p = 2 only) |

with the quadratic surrogate ``q_k(z) = a_k + c_kᵀz + ½ zᵀB_k z``,
``a_k = δ_k(w*)``, ``c_k = U_Dᵀ(g_{k+1} − g^(k))/(k+1)`` (the general
gradient: a checkpoint is no exact minimiser) and
``B_k = (U_Dᵀ H_{k+1} U_D − T_k)/(k+1)`` where ``T_k = U_Dᵀ H^(k) U_D`` is the
Rayleigh–Ritz matrix the eigensolver already has — D products on the one
sample k+1, not on k+1 samples.

Estimators that do not depend on D (``delta1``, ``full_mc``, ``sphere``) are
broadcast along ``dim``; ``delta1`` also along ``sigma``. ``sphere`` uses the
σ coordinate as its radius ε. Monte Carlo draws are common random numbers:
the same noise for every k (smooth k-curves), every σ (``z = σ ξ``) and every D
(``ξ`` truncated to its first D entries, ``U_D`` the first D eigenvectors).

The all-k engine: a perturbation's per-sample losses ``ℓ_1..ℓ_{K+1}(w)`` are
computed once and float64 prefix sums give δ_k for every k on the grid
(O(S·K) sample forwards instead of O(S·K²)). It serves every probe whose law
does not depend on k: ``full_mc``, ``sphere`` and, with ``subspace="fixed"``
(one U_D from H^(K) for all k), ``direct_mc``. With ``subspace="per_k"`` each k
has its own U_D from H^(k), warm-started from the previous k.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from curvprobe.linalg import Eigenspace, top_eigenspace
from curvprobe.criteria.probes import Isotropic, Sphere, Subspace
from curvprobe.core.problem import Problem
from curvprobe.criteria.surrogate import QuadraticSurrogate
from curvprobe.criteria.engine import subspace_derivatives

ESTIMATORS = ("delta1", "full_mc", "direct_mc", "quad_mc", "gm", "cv_mc", "sphere")
DEFAULT_ESTIMATORS = ("delta1", "full_mc", "direct_mc", "quad_mc", "gm", "cv_mc")
SUBSPACE_MODES = ("per_k", "fixed")
SUBSPACE_ESTIMATORS = ("direct_mc", "quad_mc", "gm", "cv_mc")
_STREAMS = {"subspace": 1, "full_mc": 2, "sphere": 3}


# ------------------------------------------------------------- pure helpers
def increments(losses: Tensor, ks: Sequence[int] | Tensor) -> Tensor:
    """``δ_k = (ℓ_{k+1} − L_k)/(k+1)`` for each k in ``ks`` from per-sample losses.

    ``losses`` (..., M) holds ``ℓ_1..ℓ_M`` (M ≥ max(ks) + 1); returns float64
    (..., len(ks)). ``L_k`` comes from one float64 prefix sum.
    """
    x = losses.double()
    k = torch.as_tensor(ks, dtype=torch.long, device=x.device)
    prefix = x.cumsum(-1)
    mean_k = prefix[..., k - 1] / k
    return (x[..., k] - mean_k) / (k + 1)


def noise(seed: int, stream: int, index: int, shape: tuple[int, ...],
          device: torch.device | str = "cpu") -> Tensor:
    """Standard-normal float64 noise for draw ``index`` of ``stream``.

    Each draw has its own generator seeded from ``(seed, stream, index)``, so
    a draw does not depend on batching, on other draws or on where a resumed
    run restarts.
    """
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(2)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device)


def moment(x: Tensor, p: float) -> Tensor:
    """``|x|^p`` (elementwise, float64)."""
    return x.abs() ** p


def mean_stderr(x: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Sample mean and standard error ``std(ddof=1)/√S`` along ``dim``."""
    S = x.shape[dim]
    return x.mean(dim), x.std(dim=dim, correction=1) / math.sqrt(S)


# ------------------------------------------------------------- validation
def check_grid(ks: Sequence[int], num_samples: int) -> list[int]:
    """Validate the k grid: sorted, distinct integers with 1 ≤ k ≤ n − 1."""
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty")
    if any(b <= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"ks must be sorted and without duplicates, got {ks}")
    if ks[0] < 1 or ks[-1] > num_samples - 1:
        raise ValueError(
            f"ks must lie in [1, {num_samples - 1}]: the criterion compares L_(k+1) with L_k "
            f"and the problem has {num_samples} samples; got {ks[0]}..{ks[-1]}")
    return ks


def check_sigmas(sigmas: Sequence[float]) -> list[float]:
    out = [float(s) for s in sigmas]
    if not out:
        raise ValueError("sigmas is empty")
    bad = [s for s in out if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"sigma must be positive and finite, got {bad}")
    return out


def check_dims(dims: Sequence[int], num_params: int) -> list[int]:
    out = sorted({int(d) for d in dims})
    if not out:
        raise ValueError("dims is empty")
    if out[0] < 1 or out[-1] >= num_params:
        raise ValueError(f"each D must satisfy 1 <= D < N = {num_params}, got {list(dims)}")
    return out


def check_estimators(estimators: Sequence[str], p: float, num_samples: int) -> list[str]:
    est = list(dict.fromkeys(estimators))
    unknown = [e for e in est if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; valid: {', '.join(ESTIMATORS)}")
    mc = {"full_mc", "direct_mc", "quad_mc", "cv_mc", "sphere"}
    if mc & set(est) and num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a standard error of {sorted(mc & set(est))}, "
                         f"got {num_samples}")
    if not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    return est


# ------------------------------------------------------------- the engine
@dataclass
class _Table:
    """Value, standard error and sample count over (k, sigma, dim, estimator)."""

    shape: tuple[int, int, int, int]
    value: np.ndarray = field(init=False)
    stderr: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    coefficient_summary: dict = field(default_factory=dict)  # (j, di) -> (‖c‖, tr B)

    def __post_init__(self) -> None:
        self.value = np.full(self.shape, np.nan)
        self.stderr = np.full(self.shape, np.nan)
        self.count = np.zeros(self.shape, dtype=np.int64)


def all_k_increments(problem: Problem, ks: Sequence[int], perturbations: Callable[[int, int], Tensor],
                     num_points: int, *, point_batch: int = 8) -> Tensor:
    """δ_k(w* + e_s) for every k in ``ks`` and s < ``num_points``: float64 (S, len(ks)).

    ``perturbations(s0, s1)`` returns the perturbations ``e_s`` (s1 − s0, N)
    of points ``s0..s1−1``. Each point's per-sample losses over the first
    K+1 samples are computed once (the all-k engine).
    """
    K = max(ks)
    w_star = problem.params.double()
    out = []
    for s0 in range(0, num_points, point_batch):
        s1 = min(s0 + point_batch, num_points)
        W = w_star + perturbations(s0, s1)
        losses = problem.per_sample_losses_at(W, stop=K + 1, point_batch=point_batch)
        out.append(increments(losses, ks))
    return torch.cat(out)


def per_k_increments(problem: Problem, ks: Sequence[int], perturbations: Callable[[int, int], Tensor],
                     num_points: int, *, point_batch: int = 8) -> Tensor:
    """Same result as :func:`all_k_increments` by recomputing the losses of
    the first k+1 samples for every k (the O(S·K²) loop; a reference)."""
    w_star = problem.params.double()
    cols = []
    for k in ks:
        col = []
        for s0 in range(0, num_points, point_batch):
            s1 = min(s0 + point_batch, num_points)
            losses = problem.per_sample_losses_at(w_star + perturbations(s0, s1), stop=k + 1,
                                                  point_batch=point_batch)
            col.append(increments(losses, [k])[:, 0])
        cols.append(torch.cat(col))
    return torch.stack(cols, dim=1)


def _probe_perturbations(probe: Isotropic | Sphere, seed: int, stream: int, num_params: int,
                         device: torch.device) -> Callable[[int, int], Tensor]:
    def draw(s0: int, s1: int) -> Tensor:
        xi = torch.stack([noise(seed, stream, s, (num_params,)) for s in range(s0, s1)])
        return probe.perturb(xi.to(device), num_params)

    return draw


@dataclass
class SubspaceCoefficients:
    """Surrogate coefficients at one k, for the largest D (slice for smaller D).

    ``a`` scalar, ``c`` (D,), ``B`` (D, D), the eigenspace ``U`` (N, D) and its
    Rayleigh–Ritz matrix ``T`` (D, D) of ``H^(k)``.
    """

    k: int
    a: float
    c: Tensor
    B: Tensor
    U: Tensor
    T: Tensor

    def surrogate(self, D: int, sigma: float) -> QuadraticSurrogate:
        return QuadraticSurrogate(self.a, self.c[:D], self.B[:D, :D], sigma)


def coefficients_per_k(problem: Problem, k: int, a_k: float, es: Eigenspace,
                       grad_sum_k: Tensor) -> SubspaceCoefficients:
    """``c_k`` and ``B_k`` from the eigenspace of ``H^(k)`` (its Ritz matrix
    ``T_k = diag θ``) and the derivatives of the single sample k+1.

    ``grad_sum_k`` (N,) is ``Σ_{i≤k} g_i`` (float64).
    """
    U = es.vectors
    g_next, H_next = subspace_derivatives(problem, U, [k])
    T = es.ritz_matrix
    c = (g_next[0] - U.T @ grad_sum_k / k) / (k + 1)
    B = (H_next[0] - T) / (k + 1)
    return SubspaceCoefficients(k, a_k, c, 0.5 * (B + B.T), U, T)


def coefficients_fixed(problem: Problem, ks: Sequence[int], a: Tensor,
                       es: Eigenspace) -> list[SubspaceCoefficients]:
    """``c_k``, ``B_k`` for every k with one subspace ``U_D`` (from H^(K)):
    per-sample ``U_Dᵀ g_i`` and ``U_Dᵀ H_i U_D`` for i ≤ K+1 and prefix sums."""
    K = max(ks)
    U = es.vectors
    g, H = subspace_derivatives(problem, U, range(K + 1))
    g_prefix, H_prefix = g.cumsum(0), H.cumsum(0)
    out = []
    for j, k in enumerate(ks):
        T = H_prefix[k - 1] / k
        c = (g[k] - g_prefix[k - 1] / k) / (k + 1)
        B = (H[k] - T) / (k + 1)
        out.append(SubspaceCoefficients(k, float(a[j]), c, 0.5 * (B + B.T), U, T))
    return out


def stabilization(problem: Problem, ks: Sequence[int], *, sigmas: Sequence[float],
                  dims: Sequence[int] = (1, 4, 16), estimators: Sequence[str] = DEFAULT_ESTIMATORS,
                  num_samples: int = 64, subspace: str = "per_k", seed: int = 0, tol: float = 1e-3,
                  p: float = 2, validity: xr.Dataset | bool | None = None, point_batch: int = 8,
                  eigen_kwargs: dict | None = None, progress: bool = False,
                  init: Eigenspace | Tensor | None = None,
                  on_k: Callable[[int, int, Eigenspace], None] | None = None) -> xr.Dataset:
    """Stabilization criteria over a k grid.

    Parameters
    ----------
    problem : Problem
        Ordered samples; needs ``num_samples ≥ max(ks) + 1``.
    ks : increasing ints
        Sample counts k of ``L_k`` (the criterion compares L_{k+1} with L_k).
    sigmas : positive floats
        Probe scales σ (parameter units); the sphere radius ε for ``sphere``.
    dims : ints
        Subspace dimensions D (1 ≤ D < N); one eigenspace of size max(dims)
        serves all (U_D = its first D eigenvectors).
    estimators : names from :data:`ESTIMATORS` (module docstring).
    num_samples : int
        Monte Carlo draws S per (σ, D) (≥ 2 for a standard error).
    subspace : {"per_k", "fixed"}
        U_D from H^(k) for each k (warm-started), or from H^(K) for all k.
    seed : int
        Seeds every draw (see :func:`noise`) and the eigensolver.
    tol : float
        Relative residual of the eigensolver.
    p : float ≥ 1
        Order of the Monte Carlo criteria (``gm`` and ``cv_mc`` need p = 2;
        they are NaN otherwise).
    validity : Dataset from :func:`curvprobe.quadratic_validity`, True to
        compute one at k = max(ks), or None. σ outside the validated regime get
        ``outside_validated_regime`` True and a warning for ``gm``/``quad_mc``.
    point_batch : int
        Perturbed points evaluated together (memory: that many N-vectors).
    eigen_kwargs : extra keywords for :func:`top_eigenspace`. ``per_k`` keeps
        each k's Lanczos basis to carry it to the next k (HVPs on the new
        samples only, used when they cost at most D products; memory
        2 × N × basis_size float64); ``{"keep_basis": False}`` turns that off.
    init : Eigenspace or Tensor (N, p), optional
        Warm start for the first eigenspace (per_k: of the first k — a resumed
        run passes the eigenspace of the k before; fixed: of H^(K)).
    on_k : callable ``on_k(j, k, eigenspace)``, optional
        Called after each finished k of ``subspace="per_k"`` (progress,
        checkpointing).

    Returns
    -------
    xarray.Dataset with dims ``k``, ``sigma``, ``dim``, ``estimator`` and
    variables ``value`` (loss^p), ``stderr``, ``num_samples``; per-k
    eigensolver diagnostics over (``k``, ``rank``): ``eigenvalues``,
    ``residuals``, ``converged``; ``hvps`` (k); the surrogate coefficients
    ``a`` (k), ``c_norm`` and ``trace_B`` (k, dim); ``stage_seconds`` over
    ``stage``; provenance attrs.
    """
    from curvprobe.results import provenance
    from curvprobe.criteria.validity import quadratic_validity, regime_flags

    ks = check_grid(ks, problem.num_samples)
    sigmas = check_sigmas(sigmas)
    dims = check_dims(dims, problem.num_params)
    est = check_estimators(estimators, p, num_samples)
    if subspace not in SUBSPACE_MODES:
        raise ValueError(f"unknown subspace mode {subspace!r}; valid: {', '.join(SUBSPACE_MODES)}")
    if eigen_kwargs and "init" in eigen_kwargs:
        raise ValueError("pass the warm start as stabilization(..., init=...), not in eigen_kwargs")
    if validity is True:
        validity = quadratic_validity(problem, sigmas, k=max(ks), seed=seed)
    K, N, S, Dmax = max(ks), problem.num_params, int(num_samples), max(dims)
    table = _Table((len(ks), len(sigmas), len(dims), len(est)))
    col = {e: i for i, e in enumerate(est)}
    timings: dict[str, float] = {}

    def timed(stage: str):
        return _Timer(timings, stage)

    with timed("losses_at_w_star"):
        a = increments(problem.per_sample_losses(stop=K + 1), ks)
    if "delta1" in col:
        table.value[..., col["delta1"]] = a.abs().numpy()[:, None, None]
        table.stderr[..., col["delta1"]] = 0.0
        table.count[..., col["delta1"]] = 1
    for name, make in (("full_mc", Isotropic), ("sphere", Sphere)):
        if name not in col:
            continue
        power = p if name == "full_mc" else 1.0
        with timed(f"eval_{name}"):
            for j, sigma in enumerate(sigmas):
                draw = _probe_perturbations(make(sigma), seed, _STREAMS[name], N, problem.device)
                deltas = all_k_increments(problem, ks, draw, S, point_batch=point_batch)
                m, se = mean_stderr(moment(deltas, power))
                table.value[:, j, :, col[name]] = m.numpy()[:, None]
                table.stderr[:, j, :, col[name]] = se.numpy()[:, None]
                table.count[:, j, :, col[name]] = S

    eig = _EigenRecord(len(ks), Dmax)
    if set(SUBSPACE_ESTIMATORS) & set(col):
        xi = noise(seed, _STREAMS["subspace"], 0, (S, Dmax), problem.device)
        kwargs = {"tol": tol, "seed": seed, **(eigen_kwargs or {})}
        if subspace == "fixed":
            with timed("subspace"):
                es = top_eigenspace(problem.hessian_operator(K), Dmax, init=init, **kwargs)
            with timed("assembly"):
                coeffs = coefficients_fixed(problem, ks, a, es)
            for j in range(len(ks)):
                eig.record(j, es, first=j == 0)
            _subspace_estimates_fixed(problem, ks, coeffs, xi, sigmas, dims, p, col, table, timed,
                                      point_batch)
        else:
            _subspace_estimates_per_k(problem, ks, a, xi, sigmas, dims, p, col, table, timed,
                                      point_batch, kwargs, eig, progress, on_k, init)
    ds = _dataset(problem, ks, sigmas, dims, est, table, eig, a, timings,
                  subspace=subspace, seed=seed, p=p, num_samples=S, tol=tol,
                  provenance=provenance(problem))
    if validity is not None:
        ds = regime_flags(ds, validity)
    return ds


class _Timer:
    def __init__(self, store: dict[str, float], stage: str) -> None:
        self.store, self.stage = store, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.store[self.stage] = self.store.get(self.stage, 0.0) + time.perf_counter() - self.t0


@dataclass
class _EigenRecord:
    num_k: int
    D: int
    values: np.ndarray = field(init=False)
    residuals: np.ndarray = field(init=False)
    converged: np.ndarray = field(init=False)
    hvps: np.ndarray = field(init=False)
    cost: np.ndarray = field(init=False)
    miss: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.values = np.full((self.num_k, self.D), np.nan)
        self.residuals = np.full((self.num_k, self.D), np.nan)
        self.converged = np.zeros((self.num_k, self.D), dtype=bool)
        self.hvps = np.zeros(self.num_k, dtype=np.int64)
        self.cost = np.zeros(self.num_k)
        self.miss = np.full(self.num_k, np.nan)

    def record(self, j: int, es: Eigenspace, first: bool = True) -> None:
        """Row ``j`` from ``es``; its HVP counts only where it was solved
        (``first``; a fixed subspace serves every k)."""
        self.values[j] = es.values.cpu().numpy()
        self.residuals[j] = es.residuals.cpu().numpy()
        self.converged[j] = es.converged.cpu().numpy()
        self.hvps[j] = es.num_matvecs if first else 0
        self.cost[j] = es.cost if first else 0.0
        self.miss[j] = es.miss_probability


def _fill_surrogate(j: int, coeff: SubspaceCoefficients, deltas: dict, xi: Tensor, sigmas, dims, p,
                    col, table: _Table) -> None:
    """quad_mc, gm, cv_mc (and direct_mc from ``deltas[(σ index, D index)]``) at k index j."""
    S = xi.shape[0]
    for di, D in enumerate(dims):
        table.coefficient_summary[(j, di)] = (float(coeff.c[:D].norm()), float(torch.trace(coeff.B[:D, :D])))
        for si, sigma in enumerate(sigmas):
            q = coeff.surrogate(D, sigma)
            q_vals = q(sigma * xi[:, :D])
            delta = deltas.get((si, di))
            cells = {}
            if delta is not None:
                cells["direct_mc"] = mean_stderr(moment(delta, p))
            cells["quad_mc"] = mean_stderr(moment(q_vals, p))
            if p == 2:
                gm = q.gm()
                cells["gm"] = (gm, torch.zeros(()))
                if delta is not None:
                    m, se = mean_stderr(delta**2 - q_vals**2)
                    cells["cv_mc"] = (gm + m, se)
            for name, (m, se) in cells.items():
                if name in col:
                    idx = (j, si, di, col[name])
                    table.value[idx], table.stderr[idx] = float(m), float(se)
                    table.count[idx] = 1 if name == "gm" else S


def _subspace_deltas(problem: Problem, U: Tensor, xi: Tensor, sigmas, dims, ks, point_batch: int,
                     all_k: bool) -> dict:
    """δ_k at ``w* + σ U_D ξ_s[:D]`` for every (σ, D): (S, len(ks)) tensors."""
    out = {}
    engine = all_k_increments if all_k else per_k_increments
    for si, sigma in enumerate(sigmas):
        for di, D in enumerate(dims):
            probe = Subspace(U[:, :D], sigma)

            def draw(s0: int, s1: int, probe=probe, D=D) -> Tensor:
                return probe.perturb(xi[s0:s1, :D], U.shape[0])

            out[(si, di)] = engine(problem, ks, draw, xi.shape[0], point_batch=point_batch)
    return out


def _subspace_estimates_fixed(problem, ks, coeffs, xi, sigmas, dims, p, col, table, timed,
                              point_batch) -> None:
    deltas_all = {}
    if {"direct_mc", "cv_mc"} & set(col):
        with timed("eval_direct_mc"):
            deltas_all = _subspace_deltas(problem, coeffs[0].U, xi, sigmas, dims, ks, point_batch, True)
    with timed("eval_surrogate"):
        for j, coeff in enumerate(coeffs):
            deltas = {key: v[:, j] for key, v in deltas_all.items()}
            _fill_surrogate(j, coeff, deltas, xi, sigmas, dims, p, col, table)


def _subspace_estimates_per_k(problem, ks, a, xi, sigmas, dims, p, col, table, timed, point_batch,
                              kwargs, eig: _EigenRecord, progress, on_k, init) -> None:
    from tqdm import tqdm

    Dmax = xi.shape[1]
    grad_sum = torch.zeros(problem.num_params, dtype=torch.float64, device=problem.device)
    done, prev = 0, init
    for j, k in enumerate(tqdm(ks, desc="k sweep", disable=not progress, leave=False)):
        with timed("assembly"):
            if k > done:
                grad_sum += problem.gradient(k=k, start=done) * (k - done)
                done = k
        with timed("subspace"):
            es = top_eigenspace(problem.hessian_operator(k), Dmax, init=prev,
                                **{"keep_basis": j + 1 < len(ks), **kwargs})
        eig.record(j, es)
        prev = es
        with timed("assembly"):
            coeff = coefficients_per_k(problem, k, float(a[j]), es, grad_sum)
        deltas = {}
        if {"direct_mc", "cv_mc"} & set(col):
            with timed("eval_direct_mc"):
                deltas = {key: v[:, 0] for key, v in
                          _subspace_deltas(problem, es.vectors, xi, sigmas, dims, [k], point_batch,
                                           True).items()}
        with timed("eval_surrogate"):
            _fill_surrogate(j, coeff, deltas, xi, sigmas, dims, p, col, table)
        if on_k is not None:
            on_k(j, k, es)


def _dataset(problem, ks, sigmas, dims, est, table: _Table, eig: _EigenRecord, a: Tensor,
             timings: dict[str, float], *, provenance: dict, **attrs) -> xr.Dataset:
    c_norm = np.full((len(ks), len(dims)), np.nan)
    trace_B = np.full((len(ks), len(dims)), np.nan)
    for (j, di), (cn, tb) in table.coefficient_summary.items():
        c_norm[j, di], trace_B[j, di] = cn, tb
    dims4 = ("k", "sigma", "dim", "estimator")
    ds = xr.Dataset(
        {
            "value": (dims4, table.value, {"long_name": "criterion estimate Δ_p",
                                            "units": f"loss^{attrs['p']:g}"}),
            "stderr": (dims4, table.stderr, {"long_name": "Monte Carlo standard error",
                                              "units": f"loss^{attrs['p']:g}"}),
            "num_samples": (dims4, table.count, {"long_name": "Monte Carlo draws S", "units": "1"}),
            "a": (("k",), a.cpu().numpy(), {"long_name": "a_k = δ_k(w*)", "units": "loss"}),
            "c_norm": (("k", "dim"), c_norm, {"long_name": "‖c_k‖", "units": "loss/param"}),
            "trace_B": (("k", "dim"), trace_B, {"long_name": "tr B_k", "units": "loss/param²"}),
            "eigenvalues": (("k", "rank"), eig.values, {"long_name": "top eigenvalues of H^(k)",
                                                         "units": "loss/param²"}),
            "residuals": (("k", "rank"), eig.residuals,
                          {"long_name": "relative residual ‖Hu−θu‖/|θ₁|", "units": "1"}),
            "converged": (("k", "rank"), eig.converged, {"long_name": "certified eigenpair"}),
            "hvps": (("k",), eig.hvps, {"long_name": "Hessian-vector products of the eigensolver",
                                        "units": "1"}),
            "hvp_cost": (("k",), eig.cost,
                         {"long_name": "eigensolver work in full-HVP equivalents (a carried "
                                       "basis adds HVPs on the new samples: (k − k0)/k each)",
                          "units": "1"}),
            "miss_probability": (("k",), eig.miss,
                                 {"long_name": "bound on the probability that an eigenvalue above "
                                               "θ_D + tol·|θ₁| went unseen by the eigensolver's guard",
                                  "units": "1"}),
            "stage_seconds": (("stage",), np.array(list(timings.values()), dtype=float),
                              {"long_name": "wall time per stage", "units": "s"}),
        },
        coords={
            "k": ("k", np.asarray(ks, dtype=np.int64), {"long_name": "sample count of L_k"}),
            "sigma": ("sigma", np.asarray(sigmas, dtype=float),
                      {"long_name": "probe scale σ (sphere: radius ε)", "units": "param"}),
            "dim": ("dim", np.asarray(dims, dtype=np.int64), {"long_name": "subspace dimension D"}),
            "estimator": ("estimator", np.asarray(est, dtype=str)),
            "rank": ("rank", np.arange(1, eig.D + 1, dtype=np.int64)),
            "stage": ("stage", np.asarray(list(timings), dtype=str)),
        },
        attrs={**provenance, "measurement": "stabilization", **attrs,
               "subspace_note": ("one U_D from H^(K) for all k (fixed)" if attrs["subspace"] == "fixed"
                                 else "U_D from H^(k) for each k, warm-started")},
    )
    if not ds["converged"].all() and any(e in est for e in SUBSPACE_ESTIMATORS):
        warnings.warn("some eigenpairs are not certified (see the 'converged' variable)", stacklevel=3)
    return ds
