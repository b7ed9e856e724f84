"""The measurement's arithmetic, one owner per formula.

Notation (``docs/concepts.md``): samples are ordered, ``ℓ_i(w)`` is the loss
of sample i, ``L_k = (1/k) Σ_{i≤k} ℓ_i``, and the exact increment identity

    δ_k(w) = L_{k+1}(w) − L_k(w) = (ℓ_{k+1}(w) − L_k(w)) / (k+1)

is used everywhere (two rounded means are never subtracted). Inside the top-D
eigenspace ``U_D`` (N, D) of ``H^(k)(w*)``, ``δ_k(w* + U_D z)`` has the
quadratic surrogate

    q_k(z) = a_k + c_kᵀ z + ½ zᵀ B_k z,
    a_k = δ_k(w*),
    c_k = U_Dᵀ (g_{k+1} − g^(k)) / (k+1),
    B_k = (U_Dᵀ H_{k+1} U_D − T_k) / (k+1),   T_k = U_Dᵀ H^(k) U_D,

with ``T_k`` the Rayleigh–Ritz matrix the eigensolver already has, so ``B_k``
costs D products on the one sample k+1.

This module holds:

- :func:`noise`: standard-normal draws keyed by ``(seed, stream, draw)``;
- :func:`orderings`: R permutations of the samples keyed by ``(seed, r)``;
- :func:`increments`, :func:`all_k_increments`: δ_k for every k of a grid
  from one pass of per-sample losses and a float64 prefix sum (O(S·K) sample
  forwards instead of O(S·K²)); :func:`all_k_losses` and
  :func:`permuted_increments`: the same losses serve every ordering (only the
  prefix sums change: O(R·S·K) additions, no forward pass);
- :func:`subspace_derivatives`, :func:`surrogate_terms`,
  :func:`coefficients_per_k`, :func:`coefficients_fixed`: the surrogate
  coefficients (one implementation, shared with
  :class:`~curvprobe.criteria.surrogate.QuadraticSurrogate`);
- :func:`surrogate_values`: ``q_k`` at many ``z``;
- the per-estimator functions (:data:`SUBSPACE_CELLS`, :data:`FULL_SPACE_PROBES`,
  :data:`FULL_SPACE_CLOSED_FORMS`), registered under the names of
  :data:`curvprobe.criteria.spec.ESTIMATORS`;
- :class:`HessianDifference`, :func:`full_space_moments` and :func:`gm_full`:
  the full-space Gaussian moment ``E q_k(ε)²``, ``ε ~ N(0, σ² I_N)``, with
  ``tr B_k`` and ``‖B_k‖²_F`` by two-level Hutchinson on HVPs (many cheap
  probes on the new sample's Hessian, few on the k-sample mean's);
- :func:`mean_stderr`, :func:`running_mean_stderr`: Monte Carlo mean ± standard error;
  :func:`ordering_mean_stderr`: the mean over orderings and its standard error.

Orderings. Ordering r relabels the first ``M = K + 1`` samples by a
permutation ``π_r`` (``π_0`` the identity): sample ``i`` of ordering r is
sample ``π_r(i)`` of the problem, so ``δ_k^(r)(w) = (ℓ_{π_r(k+1)}(w) −
L_k^(r)(w))/(k+1)`` with ``L_k^(r)`` the mean over ``π_r(1..k)``. At any one
point the per-sample losses ``ℓ_1..ℓ_M`` are the same for every ordering;
only their order, hence the prefix sums, changes.

Everything is float64. Units: a in loss, c in loss/param, B in loss/param²,
σ and z in param.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, jacfwd, vmap

from curvprobe.core.operators import LinearOperator, ParameterBlock, ParameterSpec, parameter_block
from curvprobe.core.problem import Problem
from curvprobe.core.samples import Batch, tree_map
from curvprobe.criteria.probes import Isotropic, Sphere, Subspace
from curvprobe.criteria.spec import ESTIMATORS, FULL_SPACE, NOISE_STREAMS, SUBSPACE
from curvprobe.criteria.theory import gaussian_moment
from curvprobe.linalg import Eigenspace
from curvprobe.linalg.trace import rademacher

__all__ = ["FULL_SPACE_CLOSED_FORMS", "FULL_SPACE_PROBES", "SUBSPACE_CELLS", "FullSpaceMoments",
           "HessianDifference", "SubspaceCoefficients", "SubspaceDraws", "all_k_increments",
           "all_k_losses", "coefficients_fixed", "coefficients_from_samples", "coefficients_per_k",
           "column_dots", "default_probes_per_unit", "default_sketch_size", "estimate", "full_space_moments",
           "gm_full", "increments", "mean_stderr", "moment", "noise", "ordering_mean_stderr", "orderings",
           "per_k_increments", "permuted_increments", "probe_perturbations", "running_mean_stderr",
           "sample_sketch", "split_block", "split_terms", "subspace_derivatives", "subspace_estimator",
           "subspace_increments", "subspace_losses", "surrogate_terms", "surrogate_values", "unit_terms"]


# ------------------------------------------------------------- draws and moments
def noise(seed: int, stream: int, index: int, shape: tuple[int, ...],
          device: torch.device | str = "cpu") -> Tensor:
    """Standard-normal float64 noise of ``shape`` for draw ``index`` of ``stream``.

    Each draw has its own generator seeded from ``(seed, stream, index)``, so
    a draw does not depend on batching, on other draws or on where a resumed
    run restarts. Streams: :data:`curvprobe.criteria.spec.NOISE_STREAMS`.
    """
    return torch.randn(shape, generator=_keyed_generator(seed, stream, index),
                       dtype=torch.float64).to(device)


def _keyed_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream, index)`` alone."""
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def orderings(count: int, length: int, seed: int = 0) -> Tensor:
    """R = ``count`` orderings of ``length`` samples: int64 (R, length), 0-based.

    Row 0 is the identity (the given order); row r ≥ 1 is a uniform random
    permutation drawn from a generator keyed by ``(seed, NOISE_STREAMS
    ["ordering"], r)``, so ordering r does not depend on R (a run with more
    orderings extends one with fewer) nor on the probe draws' ``seed``.
    """
    if int(count) < 1 or int(length) < 1:
        raise ValueError(f"need count >= 1 and length >= 1, got {count}, {length}")
    rows = [torch.arange(length)]
    rows += [torch.randperm(length, generator=_keyed_generator(seed, NOISE_STREAMS["ordering"], r))
             for r in range(1, int(count))]
    return torch.stack(rows)


def moment(x: Tensor, p: float) -> Tensor:
    """``|x|^p`` (elementwise, float64)."""
    return x.abs() ** p


def mean_stderr(x: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Sample mean and standard error ``std(x, ddof=1) / √S`` along ``dim`` (S draws)."""
    S = x.shape[dim]
    return x.mean(dim), x.std(dim=dim, correction=1) / math.sqrt(S)


def ordering_mean_stderr(values: Tensor, integrands: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over R orderings and its standard error, with the Monte Carlo part.

    ``values`` (R, ...) are the per-ordering estimates ``v_r = o_r + (1/S)
    Σ_s f_rs``; ``integrands`` (R, S, ...) the ``f_rs`` (None for closed
    forms and exact values). The S draws are common to all orderings (one set
    of per-sample losses serves every ordering), so ``f_rs`` is a crossed
    (ordering × draw) design, and the variance of ``v̄ = (1/R) Σ_r v_r`` is
    estimated as

        se² = s²_R / R + s²_S / S,
        s²_R = var_r(v_r)  (ddof 1),   s²_S = var_s((1/R) Σ_r f_rs)  (ddof 1):

    the spread of the per-ordering values (ordering effect, plus the
    interaction of ordering and draw) and the Monte Carlo error of the
    ordering-averaged integrand (the draw effect every ordering shares,
    which the spread across orderings cannot see). For the two-way random
    effects model ``f_rs = μ + α_r + β_s + γ_rs`` its expectation is
    ``σ²_α/R + σ²_β/S + 2σ²_γ/(RS)``: conservative by the interaction term
    ``σ²_γ/(RS)``, at most the within-ordering Monte Carlo variance over R.

    Returns
    -------
    mean, stderr, mc_stderr : Tensor (...) float64
        ``v̄``, ``se`` and its Monte Carlo part ``s_S / √S`` (0 without integrands).
        R = 1 gives ``stderr = mc_stderr`` (no spread to measure).
    """
    values = values.double()
    R = values.shape[0]
    mean = values.mean(0)
    between = values.var(0, correction=1) / R if R > 1 else torch.zeros_like(mean)
    if integrands is None:
        mc = torch.zeros_like(mean)
    else:
        shared = integrands.double().mean(0)
        mc = shared.var(0, correction=1) / shared.shape[0]
    return mean, (between + mc).sqrt(), mc.sqrt()


def running_mean_stderr(x: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and standard error of the first S draws of ``x`` (S_max, ...) for each S in ``counts``.

    Returns two float64 tensors (len(counts), ...): nested prefixes of one
    Monte Carlo path, from float64 prefix sums of ``x`` and ``x²``.
    """
    idx = torch.as_tensor(list(counts), dtype=torch.long)
    n = idx.double().reshape((-1,) + (1,) * (x.dim() - 1))
    x = x.double()
    mean = x.cumsum(0)[idx - 1] / n
    # the variance from sums of the draws shifted by the first one: a large
    # common offset (GM in cv_mc) would cancel catastrophically otherwise
    y = x - x[:1]
    ysum, ysq = y.cumsum(0)[idx - 1], (y**2).cumsum(0)[idx - 1]
    var = (ysq - ysum**2 / n) / (n - 1)
    return mean, (var.clamp_min(0) / n).sqrt()


# ------------------------------------------------------------- all-k increments
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


def permuted_increments(losses: Tensor, perms: Tensor, ks: Sequence[int] | Tensor) -> Tensor:
    """δ_k of every ordering from one set of per-sample losses: float64 (R, ..., len(ks)).

    ``losses`` (..., M) holds ``ℓ_1..ℓ_M`` in the given order, ``perms``
    (R, M') the orderings (0-based, ``max(ks) < M' ≤ M``; the first M'
    samples are reordered). Ordering r is :func:`increments` of
    ``losses[..., perms[r]]``: R prefix sums, no forward pass.
    """
    out = [increments(losses[..., perm], ks) for perm in perms.to(losses.device)]
    return torch.stack(out)


Perturbations = Callable[[int, int], Tensor]
"""``draw(s0, s1)``: the perturbations ``e_s = w_s − w*`` (s1 − s0, N) of points s0..s1−1."""


def all_k_increments(problem: Problem, ks: Sequence[int], perturbations: Perturbations,
                     num_points: int, *, point_batch: int = 8) -> Tensor:
    """δ_k(w* + e_s) for every k in ``ks`` and s < ``num_points``: float64 (S, len(ks)).

    Each point's per-sample losses over the first K+1 samples are computed
    once (the all-k engine), ``point_batch`` points at a time.
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


def all_k_losses(problem: Problem, perturbations: Perturbations, num_points: int, stop: int, *,
                 point_batch: int = 8) -> Tensor:
    """Per-sample losses ``ℓ_i(w* + e_s)`` for ``i < stop``, ``s < num_points``: float64 (S, stop).

    The input of :func:`permuted_increments`: one forward pass per point and
    sample, whatever the number of orderings.
    """
    w_star = problem.params.double()
    out = []
    for s0 in range(0, num_points, point_batch):
        s1 = min(s0 + point_batch, num_points)
        out.append(problem.per_sample_losses_at(w_star + perturbations(s0, s1), stop=stop,
                                                point_batch=point_batch))
    return torch.cat(out)


def per_k_increments(problem: Problem, ks: Sequence[int], perturbations: Perturbations,
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


FULL_SPACE_PROBES: dict[str, Callable[[float], Isotropic | Sphere]] = {
    "full_mc": Isotropic,
    "sphere": Sphere,
}
"""Full-space estimator name → its probing law at scale σ (the registry entry is in
:data:`~curvprobe.criteria.spec.ESTIMATORS`)."""


def probe_perturbations(probe: Isotropic | Sphere, seed: int, stream: int, num_params: int,
                        device: torch.device | str) -> Perturbations:
    """The draws of a full-space probe: point s from :func:`noise` ``(seed, stream, s)``."""
    def draw(s0: int, s1: int) -> Tensor:
        xi = torch.stack([noise(seed, stream, s, (num_params,)) for s in range(s0, s1)])
        return probe.perturb(xi.to(device), num_params)

    return draw


def subspace_increments(problem: Problem, U: Tensor, xi: Tensor, sigmas: Sequence[float],
                        dims: Sequence[int], ks: Sequence[int], *, point_batch: int = 8,
                        all_k: bool = True) -> dict[tuple[int, int], Tensor]:
    """δ_k at ``w* + σ U_D ξ_s[:D]`` for every (σ index, D index): float64 (S, len(ks)) each.

    ``U`` (N, D_max) holds the eigenvectors, ``xi`` (S, D_max) the standard
    normal draws; ``U_D`` and ``ξ[:D]`` are their first D columns.
    """
    out = {}
    engine = all_k_increments if all_k else per_k_increments
    for si, sigma in enumerate(sigmas):
        for di, D in enumerate(dims):
            probe = Subspace(U[:, :D], sigma)

            def draw(s0: int, s1: int, probe: Subspace = probe, D: int = D) -> Tensor:
                return probe.perturb(xi[s0:s1, :D], U.shape[0])

            out[(si, di)] = engine(problem, ks, draw, xi.shape[0], point_batch=point_batch)
    return out


def subspace_losses(problem: Problem, U: Tensor, xi: Tensor, sigmas: Sequence[float],
                    dims: Sequence[int], stop: int, *,
                    point_batch: int = 8) -> dict[tuple[int, int], Tensor]:
    """Per-sample losses at ``w* + σ U_D ξ_s[:D]`` for every (σ index, D index): float64 (S, stop).

    The orderings' version of :func:`subspace_increments`: one forward pass
    per point and sample, reordered by :func:`permuted_increments`.
    """
    out = {}
    for si, sigma in enumerate(sigmas):
        for di, D in enumerate(dims):
            probe = Subspace(U[:, :D], sigma)

            def draw(s0: int, s1: int, probe: Subspace = probe, D: int = D) -> Tensor:
                return probe.perturb(xi[s0:s1, :D], U.shape[0])

            out[(si, di)] = all_k_losses(problem, draw, xi.shape[0], stop, point_batch=point_batch)
    return out


# ------------------------------------------------------------- surrogate coefficients


def surrogate_terms(k: int, grad_next: Tensor, grad_mean: Tensor, hess_next: Tensor,
                    ritz: Tensor) -> tuple[Tensor, Tensor]:
    """``c_k`` (D,) and ``B_k`` (D, D) from derivatives projected on ``U_D``.

    ``grad_next = U_Dᵀ g_{k+1}``, ``grad_mean = U_Dᵀ g^(k)`` (D,),
    ``hess_next = U_Dᵀ H_{k+1} U_D`` and ``ritz = T_k`` (D, D); the
    differences are formed before dividing by ``k + 1``, and ``B_k`` is
    symmetrised (all ``zᵀBz`` sees). float64.
    """
    c = (grad_next.double() - grad_mean.double()) / (k + 1)
    B = (hess_next.double() - ritz.double()) / (k + 1)
    return c, 0.5 * (B + B.T)


def surrogate_values(a: Tensor | float, c: Tensor, B: Tensor, z: Tensor) -> Tensor:
    """``q(z) = a + cᵀz + ½ zᵀBz`` for ``z`` (..., D): float64 (...,)."""
    return a + z @ c + 0.5 * ((z @ B) * z).sum(-1)


@dataclass
class SubspaceCoefficients:
    """Surrogate coefficients at one k, for the largest D (slice for smaller D).

    ``a`` scalar (loss), ``c`` (D,), ``B`` (D, D), the eigenspace ``U`` (N, D)
    and its Rayleigh–Ritz matrix ``T`` (D, D) of ``H^(k)``.
    """

    k: int
    a: float
    c: Tensor
    B: Tensor
    U: Tensor
    T: Tensor

    def terms(self, D: int) -> tuple[Tensor, Tensor]:
        """``(c_k, B_k)`` inside ``U_D``: the leading D entries."""
        return self.c[:D], self.B[:D, :D]


def coefficients_per_k(problem: Problem, k: int, a_k: float, es: Eigenspace,
                       grad_sum_k: Tensor) -> SubspaceCoefficients:
    """``c_k`` and ``B_k`` from the eigenspace of ``H^(k)`` (its Ritz matrix
    ``T_k``) and the derivatives of the single sample k+1.

    ``grad_sum_k`` (N,) is ``Σ_{i≤k} g_i`` (float64).
    """
    U = es.vectors
    g_next, H_next = subspace_derivatives(problem, U, [k])
    T = es.ritz_matrix
    c, B = surrogate_terms(k, g_next[0], U.T @ grad_sum_k / k, H_next[0], T)
    return SubspaceCoefficients(k, a_k, c, B, U, T)


def coefficients_fixed(problem: Problem, ks: Sequence[int], a: Tensor,
                       es: Eigenspace) -> list[SubspaceCoefficients]:
    """``c_k``, ``B_k`` for every k with one subspace ``U_D`` (from H^(K)):
    per-sample ``U_Dᵀ g_i`` and ``U_Dᵀ H_i U_D`` for i ≤ K+1 and prefix sums."""
    K = max(ks)
    U = es.vectors
    g, H = subspace_derivatives(problem, U, range(K + 1))
    return coefficients_from_samples(ks, a, g, H, U)


def coefficients_from_samples(ks: Sequence[int], a: Tensor, g: Tensor, H: Tensor,
                              U: Tensor) -> list[SubspaceCoefficients]:
    """``c_k``, ``B_k`` for every k from per-sample derivatives in one subspace ``U`` (N, D).

    ``g`` (M, D) holds ``U_Dᵀ g_i`` and ``H`` (M, D, D) ``U_Dᵀ H_i U_D`` for
    the samples in their order (an ordering passes its permuted rows), ``a``
    (len(ks),) the ``a_k`` of that order; ``T_k = U_Dᵀ H^(k) U_D`` is the
    prefix mean of ``H``.
    """
    g_prefix, H_prefix = g.cumsum(0), H.cumsum(0)
    out = []
    for j, k in enumerate(ks):
        T = H_prefix[k - 1] / k
        c, B = surrogate_terms(k, g[k], g_prefix[k - 1] / k, H[k], T)
        out.append(SubspaceCoefficients(k, float(a[j]), c, B, U, T))
    return out


# ------------------------------------------------------------- subspace estimators
@dataclass(frozen=True)
class SubspaceDraws:
    """What a subspace estimator sees at one (k, σ, D).

    ``a`` (loss), ``c`` (D,), ``B`` (D, D): the surrogate; ``sigma``; ``z``
    (S, D) the draws ``σ ξ_s[:D]``; ``q`` (S,) the surrogate at them;
    ``delta`` (S,) the true ``δ_k(w* + U_D z_s)`` (None unless some requested
    estimator has ``true_increments``); ``p`` the criterion's order.
    """

    a: Tensor
    c: Tensor
    B: Tensor
    sigma: float
    z: Tensor
    q: Tensor
    delta: Tensor | None
    p: float

    def gm(self) -> Tensor:
        """The Gaussian moment ``E q(z)²`` in closed form (loss²)."""
        return gaussian_moment(self.a, self.c, self.B, self.sigma)


Terms = tuple[Tensor | float, Tensor | None]
"""``(offset, integrand)`` of an estimator at one (k, σ, D): its value is
``offset + mean(integrand)`` and its standard error that of the mean of
``integrand`` (S,) (None for a closed form: standard error 0)."""

SUBSPACE_CELLS: dict[str, Callable[[SubspaceDraws], Terms]] = {}
"""Subspace estimator name → its function of :class:`SubspaceDraws` returning :data:`Terms`."""


def subspace_estimator(name: str) -> Callable[[Callable[[SubspaceDraws], Terms]],
                                              Callable[[SubspaceDraws], Terms]]:
    """Register ``fn(draws) -> (offset, integrand)`` as the arithmetic of the
    subspace estimator ``name`` (which must have a registry entry)."""
    if name not in ESTIMATORS or ESTIMATORS[name].space != SUBSPACE:
        raise ValueError(f"{name!r} is not a subspace estimator of curvprobe.criteria.spec.ESTIMATORS")

    def register(fn: Callable[[SubspaceDraws], Terms]) -> Callable[[SubspaceDraws], Terms]:
        SUBSPACE_CELLS[name] = fn
        return fn

    return register


def estimate(terms: Terms) -> tuple[float, float]:
    """``(value, standard error)`` from an estimator's :data:`Terms`."""
    offset, integrand = terms
    if integrand is None:
        return float(offset), 0.0
    m, se = mean_stderr(integrand)
    return float(offset + m), float(se)


@subspace_estimator("direct_mc")
def direct_mc(d: SubspaceDraws) -> Terms:
    """Δ_p^(D): the mean of ``|δ_k(w* + U_D z_s)|^p``."""
    assert d.delta is not None
    return 0.0, moment(d.delta, d.p)


@subspace_estimator("quad_mc")
def quad_mc(d: SubspaceDraws) -> Terms:
    """Surrogate ``E|q_k(z)|^p``: the mean of ``|q_k(z_s)|^p``."""
    return 0.0, moment(d.q, d.p)


@subspace_estimator("gm")
def gm(d: SubspaceDraws) -> Terms:
    """Surrogate ``E q_k(z)²`` in closed form."""
    return d.gm(), None


@subspace_estimator("cv_mc")
def cv_mc(d: SubspaceDraws) -> Terms:
    """Δ₂^(D) with the surrogate as control variate: ``GM + mean(δ_k(w_s)² − q_k(z_s)²)``."""
    assert d.delta is not None
    return d.gm(), d.delta**2 - d.q**2


# ------------------------------------------------------------- full-space Gaussian moment
class HessianDifference(LinearOperator):
    """``B_k = ∇²δ_k(w) = (H_{k+1} − H^(k)) / (k+1)`` (N × N) through HVPs:
    one on the single sample k+1 and one over the first k samples, their
    difference formed before dividing (the increment identity).
    :meth:`sample_part` and :meth:`mean_part` give the two terms apart: the
    first costs one sample's forward and backward passes, the second k
    samples'."""

    def __init__(self, problem: Problem, k: int, w: Tensor | None = None) -> None:
        super().__init__(problem.num_params, problem.device)
        self.problem, self.k, self.w = problem, int(k), problem.point(w)

    def _matmat(self, V: Tensor) -> Tensor:
        return self._sample_hvp(V).sub_(self.problem.hvp(V, self.k, self.w)).div_(self.k + 1)

    def sample_part(self, V: Tensor, out: Tensor | None = None) -> Tensor:
        """``H_{k+1} V / (k+1)``: (N, m) float64 for ``V`` (N, m), written
        into ``out`` (N, m) float64 if given (a buffer reused across calls)."""
        return self._sample_hvp(V, out).div_(self.k + 1)

    def mean_part(self, V: Tensor) -> Tensor:
        """``H^(k) V / (k+1)``: (N, m) float64 for ``V`` (N, m)."""
        return self.problem.hvp(V, self.k, self.w).div_(self.k + 1)

    def block_parts(self, block: ParameterBlock, X: Tensor) -> tuple[Tensor, Tensor]:
        """``((B₁)_AA X, (B_m)_AA X)`` (|A|, m) float64 for block vectors ``X``
        (|A|, m): products that differentiate the block ``A`` alone
        (:class:`~curvprobe.core.operators.BlockHessianOperator`)."""
        p, k = self.problem, self.k
        one = p.hessian_operator(k + 1, self.w, start=k, params=block.names)
        mean = p.hessian_operator(k, self.w, params=block.names)
        return one.matmat(X).div_(k + 1), mean.matmat(X).div_(k + 1)

    def _sample_hvp(self, V: Tensor, out: Tensor | None = None) -> Tensor:
        """``H_{k+1} V`` in blocks of ``batch_size`` columns (into ``out`` if
        given): on one sample ``hvp_mode="auto"`` batches each block's second
        backward over its columns (:func:`~curvprobe.core.problem.hvp_kernel`),
        and ``batch_size`` columns hold the memory of ``batch_size`` samples."""
        p, step = self.problem, self.problem.batch_size
        if out is None:
            out = torch.empty(V.shape, dtype=torch.float64, device=V.device)
        for a in range(0, V.shape[1], step):
            p.hvp(V[:, a:a + step], self.k + 1, self.w, start=self.k, out=out[:, a:a + step])
        return out


@dataclass(frozen=True)
class FullSpaceMoments:
    """What the full-space Gaussian moment needs at one k.

    ``c_norm2 = ‖c_k‖²`` (exact, loss²/param²); ``trace`` estimates
    ``tr B_k`` (loss/param²) and ``frobenius`` ``‖B_k‖²_F`` (loss²/param⁴)
    as the means of the independent per-unit terms ``trace_terms`` and
    ``frobenius_terms`` ((u,) each, :func:`full_space_moments`)."""

    k: int
    c_norm2: float
    trace: float
    frobenius: float
    trace_terms: Tensor
    frobenius_terms: Tensor


def default_probes_per_unit(k: int) -> int:
    """``r = ⌈k/4⌉`` deflated probes on sample k+1 per unit of :func:`full_space_moments`.

    On tiny-gpt at k = 64 a product with ``B_m`` (k samples) costs 66 ms a
    column and one with ``B₁`` (one sample, batched double backward, with its
    probe's draw, projection and dot products) about 4 ms, and a deflated
    ``B₁`` probe varies about 4.8× as much as ``B_m``'s (0.15 against 0.032),
    so this count puts the optimum near ``r = √(4.8 · 66/4) ≈ 9``. In whole
    runs (60 units, 3 seeds; ``benchmarks/gm_variance.py --tune``) r = 16 had
    the lowest wall time × variance of 8, 12, 16, 24 (4.8e-3 against 5.4e-3
    to 6.1e-3).
    """
    return max(1, math.ceil(int(k) / 4))


def default_sketch_size(k: int, n: int) -> int:
    """``s = min(k, 64, N)`` columns of the sketch of ``H_{k+1}`` (its QR costs
    ``N s²``; on tiny-gpt, k = 64, 50–64 columns were best)."""
    return max(0, min(int(k), 64, int(n)))


def sample_sketch(B: HessianDifference, s: int, generator: torch.Generator) -> tuple[Tensor, float, float]:
    """Hutch++'s exact part of ``B₁ = H_{k+1}/(k+1)``: ``(Q, tr(Qᵀ B₁ Q),
    ‖B₁ Q‖²_F)`` with ``Q = orth(B₁ S)`` (N, s), ``S`` Rademacher — 2s
    single-sample products. ``‖B₁ Q‖²_F = tr(Qᵀ B₁² Q)``."""
    n = B.shape[0]
    if s == 0:
        return torch.zeros(n, 0, dtype=torch.float64, device=B.device), 0.0, 0.0
    Q = torch.linalg.qr(B.sample_part(rademacher(n, s, generator, B.device)))[0]
    Z = B.sample_part(Q)
    return Q, float((Q * Z).sum()), float((Z * Z).sum())


def unit_terms(sample_products: Tensor, probes: Tensor, mean_products: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(t, f)`` of ``g`` units, (g,) each: given ``Q``, unbiased for
    ``(tr(P B₁ P) − tr B_m, tr(P B₁² P) − 2⟨B₁, B_m⟩ + ‖B_m‖²_F)``, ``P = I − Q Qᵀ``.

    ``probes`` (N, g + g r) are the units' ``v_0`` and then unit 0's ``x_1..x_r``,
    unit 1's, …, with ``x_i = P v_i`` and the ``v`` random with ``E vvᵀ = I``;
    ``sample_products`` (N, g + g r) their products with ``B₁ = H_{k+1}/(k+1)``;
    ``mean_products`` (N, g) are ``B_m v_0`` with ``B_m = H^(k)/(k+1)`` (so
    ``B_k = B₁ − B_m``). For each unit

        t = mean_i x_iᵀ B₁ x_i − v_0ᵀ B_m v_0,
        f = mean_i ‖B₁ x_i‖² − (2 (B₁ v_0)ᵀ (B_m v_0) − ‖B_m v_0‖²),

    since ``E vᵀAv = tr A`` and ``‖B₁ − B_m‖²_F = ‖B₁‖²_F − 2⟨B₁, B_m⟩ + ‖B_m‖²_F``.
    """
    g = mean_products.shape[1]
    X, W, heads, sampled = probes[:, g:], sample_products[:, g:], probes[:, :g], sample_products[:, :g]
    dot = column_dots
    t1, f1 = dot(X, W).view(g, -1).mean(dim=1), dot(W, W).view(g, -1).mean(dim=1)
    t2 = dot(heads, mean_products)
    f2 = 2 * dot(sampled, mean_products) - dot(mean_products, mean_products)
    return t1 - t2, f1 - f2


def column_dots(X: Tensor, Y: Tensor) -> Tensor:
    """``(Σ_n X[n, j] Y[n, j])_j``: (m,) float64 for ``X``, ``Y`` (N, m) of any
    floating dtypes, over blocks of rows whose float64 temporaries stay under
    16 MB: a whole N × m temporary, as a plain ``vecdot`` makes, is fresh
    pages at every call (``docs/performance.md``, "Curvature toolkit")."""
    m = X.shape[1]
    rows = max(1, (1 << 21) // max(1, m))
    out = torch.zeros(m, dtype=torch.float64, device=X.device)
    for a in range(0, X.shape[0], rows):
        out += torch.linalg.vecdot(X[a:a + rows].double(), Y[a:a + rows].double(), dim=0)
    return out


def split_block(problem: Problem, split: ParameterSpec | bool) -> ParameterBlock | None:
    """The block ``A`` that :func:`full_space_moments` probes apart: ``split``
    itself (names, a glob, a module or a predicate), None for False, and for
    True the parameters of the model's last module — those named like the last
    trainable parameter up to its last dot (``lm_head.*``: a network's output
    layer, whose block products stop there and cost least) — unless that is
    every parameter (then None: nothing to split)."""
    if split is False:
        return None
    if split is True:
        last = problem.param_names[-1]
        spec: ParameterSpec = last.rsplit(".", 1)[0] + ".*" if "." in last else last
    else:
        spec = split
    block = parameter_block(problem.model, problem.layer_slices(), spec)
    return None if split is True and block.size == problem.num_params else block


def split_terms(sampled: Tensor, mean: Tensor, probes: Tensor, sample_products: Tensor,
                mean_products: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(t_A, f_A)`` of ``g`` units, (g,) each: what the head probes
    ``v_R`` (zero on the block ``A``, the rest ``R``) leave out of ``tr B_m``,
    ``‖B_m‖²_F`` and ``⟨B₁, B_m⟩``.

    ``sampled`` and ``mean`` (|A|, g) are the block rows of ``B₁ v_R`` and
    ``B_m v_R``; ``probes`` (|A|, g n) are each unit's ``n`` block probes
    ``a_l`` (``E a aᵀ = I``), ``sample_products`` and ``mean_products`` their
    products with the blocks ``(B₁)_AA`` and ``(B_m)_AA``. With ``E v_R v_Rᵀ =
    I_R`` the head terms miss ``tr (B_m)_AA``, and of ``‖B_m‖²_F`` and
    ``⟨B₁, B_m⟩`` (sums over all (A, R) blocks) the (A, R) block once more and
    the (A, A) block, so per unit

        t_A = mean_l a_lᵀ (B_m)_AA a_l,
        f_A = 2 ((B₁ v_R)_Aᵀ (B_m v_R)_A + mean_l ((B₁)_AA a_l)ᵀ (B_m)_AA a_l)
              − (‖(B_m v_R)_A‖² + mean_l ‖(B_m)_AA a_l‖²).
    """
    g = sampled.shape[1]
    dot = column_dots

    def per_unit(x: Tensor) -> Tensor:
        return x.view(g, -1).mean(dim=1)

    cross = dot(sampled, mean) + per_unit(dot(sample_products, mean_products))
    square = dot(mean, mean) + per_unit(dot(mean_products, mean_products))
    return per_unit(dot(probes, mean_products)), 2 * cross - square


def full_space_moments(problem: Problem, k: int, num_matvecs: int, seed: int, stream: int,
                       probes_per_unit: int | None = None, sketch_size: int | None = None,
                       split: ParameterSpec | bool = True, block_probes: int = 4) -> FullSpaceMoments:
    """``‖c_k‖²``, and ``tr B_k`` and ``‖B_k‖²_F`` by two-level Hutchinson:
    Hutch++'s exact part of the new sample's Hessian plus ``u = num_matvecs``
    independent units (:func:`unit_terms`, :func:`split_terms`).

    ``B_k = B₁ − B_m`` splits into the new sample's Hessian ``B₁ =
    H_{k+1}/(k+1)``, whose products are cheap (one sample), and the mean's
    ``B_m = H^(k)/(k+1)``, whose products cost k samples. A sketch of ``B₁``
    (``s = sketch_size`` columns, default :func:`default_sketch_size`;
    :func:`sample_sketch`) gives ``Q`` and the exact parts ``tr(Qᵀ B₁ Q)``,
    ``tr(Qᵀ B₁² Q)``. Unit j spends one product with ``B_m`` on ``v_R`` and
    ``r + 1`` with ``B₁`` on ``v_R`` and ``P v_1 .. P v_r`` (``r =
    probes_per_unit``, default :func:`default_probes_per_unit`). The block
    ``A`` of :func:`split_block` (``split``; True: the output layer) is left
    out of ``v_R`` and probed apart by ``n = block_probes`` block products
    with each of ``B₁`` and ``B_m`` (:func:`split_terms`), which reach only
    the layers from ``A`` on: on tiny-gpt a ``B_m`` probe without ``lm_head``
    varies by 0.023 instead of 0.032 (the block's own share and its cross
    terms with the rest), a block probe by 0.0026, at 2.8 ms a column for
    both block products against 71 ms for one ``B_m`` product
    (``benchmarks/gm_variance.py``).
    Probes are Rademacher (``E vvᵀ = I``): the heads ``v`` are the rows of a
    (u, N) draw keyed by ``(seed, stream, 0)``, ``S`` keyed by ``(seed,
    stream, 1)``, unit j's ``v_1..v_r`` and then its block probes drawn from
    the generator keyed by ``(seed, stream, j + 2)``; they are drawn and
    projected in the problem's dtype, and ``⌊batch_size / (r + 1)⌋`` units
    share one call of products. Given ``Q`` the unit terms are i.i.d. and
    unbiased, so their means are the estimates and their spread the standard
    error (the exact parts add no variance).

    ``Var t ≤ 2‖P B₁ P‖²_F/r + 2‖B_m‖²_F`` (Rademacher drops the diagonals'
    share), against Hutchinson's ``2‖B_k‖²_F``: the split pays when
    ``⟨B₁, B_m⟩ ≪ ‖B₁‖²_F`` (tiny-gpt, k = 64: 0.03 ‖B₁‖²_F).
    """
    n, u = problem.num_params, int(num_matvecs)
    r = default_probes_per_unit(k) if probes_per_unit is None else int(probes_per_unit)
    s = default_sketch_size(k, n) if sketch_size is None else min(int(sketch_size), n)
    if u < 1 or r < 1 or s < 0 or block_probes < 1:
        raise ValueError("need num_matvecs, probes_per_unit, block_probes >= 1 and sketch_size >= 0; "
                         f"got {u}, {r}, {block_probes}, {s}")
    B = HessianDifference(problem, k)
    Q, trace_q, frobenius_q = sample_sketch(B, s, _keyed_generator(seed, stream, 1))
    t, f = _units(B, Q, split_block(problem, split), u, r, int(block_probes), (seed, stream))
    g_mean = problem.gradient(k=k)
    c = (problem.gradient(k=k + 1, start=k) - g_mean) / (k + 1)
    return FullSpaceMoments(k, float(c @ c), trace_q + float(t.mean()), frobenius_q + float(f.mean()), t, f)


def _units(B: HessianDifference, Q: Tensor, block: ParameterBlock | None, u: int, r: int, nb: int,
           key: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The ``(t, f)`` (u,) of :func:`full_space_moments`' units, in blocks of
    units that share one call of single-sample products."""
    problem, (seed, stream) = B.problem, key
    n, dtype, device = problem.num_params, problem.dtype, problem.device
    heads = rademacher(u, n, _keyed_generator(seed, stream, 0), device, dtype).T
    for sl in () if block is None else block.slices:
        heads[sl] = 0
    mean_products = B.mean_part(heads)
    t, f = (torch.zeros(u, dtype=torch.float64, device=device) for _ in range(2))
    Qp = Q.to(dtype)
    gens = [_keyed_generator(seed, stream, j + 2) for j in range(u)]
    sampled = torch.zeros(0 if block is None else block.size, u, dtype=torch.float64, device=device)
    per_call = max(1, problem.batch_size // (r + 1))
    # one set of buffers for every block of units: a fresh N × m float64
    # tensor per call costs its pages anew (docs/performance.md)
    width = min(per_call, u) * (r + 1)
    buffers = (torch.empty(n, width, dtype=dtype, device=device),
               torch.empty(n, width, dtype=torch.float64, device=device))
    for j0 in range(0, u, per_call):
        j1 = min(j0 + per_call, u)
        g = j1 - j0
        V, products = (buf[:, :g * (r + 1)] for buf in buffers)
        V[:, :g] = heads[:, j0:j1]
        for i, gen in enumerate(gens[j0:j1]):
            V[:, g + i * r:g + (i + 1) * r] = rademacher(r, n, gen, device, dtype).T
        rest = V[:, g:]
        rest -= Qp @ (Qp.T @ rest)
        B.sample_part(V, out=products)
        t[j0:j1], f[j0:j1] = unit_terms(products, V, mean_products[:, j0:j1])
        if block is not None:
            sampled[:, j0:j1] = block.take(products[:, :g])
    if block is not None:
        t_A, f_A = _block_terms(B, block, gens, sampled, block.take(mean_products), nb)
        t -= t_A
        f -= f_A
    return t, f


def _block_terms(B: HessianDifference, block: ParameterBlock, gens: list[torch.Generator], sampled: Tensor,
                 mean: Tensor, nb: int) -> tuple[Tensor, Tensor]:
    """:func:`split_terms` of every unit: each unit's ``nb`` block probes drawn
    from its generator (after its ``v_1..v_r``), as many units per call of
    block products as keep the probes within one call of full products'
    memory (``N × batch_size``)."""
    problem, u = B.problem, len(gens)
    per_call = max(1, problem.num_params * problem.batch_size // (block.size * nb))
    t, f = (torch.zeros(u, dtype=torch.float64, device=problem.device) for _ in range(2))
    for j0 in range(0, u, per_call):
        j1 = min(j0 + per_call, u)
        A = torch.cat([rademacher(nb, block.size, gen, problem.device).T for gen in gens[j0:j1]], dim=1)
        t[j0:j1], f[j0:j1] = split_terms(sampled[:, j0:j1], mean[:, j0:j1], A, *B.block_parts(block, A))
    return t, f


def gm_full(moments: FullSpaceMoments, a: float, sigma: float) -> Terms:
    """The full-space Gaussian moment ``E q_k(ε)²``, ``ε ~ N(0, σ² I_N)``:

        GM_full = a² + a σ² tr B + σ² ‖c‖² + (σ⁴/4) (2 ‖B‖²_F + (tr B)²),

    the formula of :func:`~curvprobe.criteria.theory.gaussian_moment` in all
    N dimensions, with ``tr B`` and ``‖B‖²_F`` the means of the unit terms
    ``tᵢ, fᵢ`` of :func:`full_space_moments` and ``(tr B)²`` debiased by the
    estimate's variance. Its standard error propagates the unit terms
    linearly (delta method): the integrand is ``∂_T GM (tᵢ − t̄) + ∂_F GM (fᵢ − f̄)`` with
    ``∂_T = a σ² + σ⁴ tr B / 2``, ``∂_F = σ⁴ / 2`` — mean zero, so the value
    is the offset and the error that of the integrand's mean.
    """
    T, F, s2 = moments.trace, moments.frobenius, sigma * sigma
    t, f = moments.trace_terms, moments.frobenius_terms
    var_T = float(t.var()) / t.numel() if t.numel() > 1 else 0.0
    value = a * a + a * s2 * T + s2 * moments.c_norm2 + 0.25 * s2 * s2 * (2 * F + T * T - var_T)
    integrand = (a * s2 + 0.5 * s2 * s2 * T) * (t - t.mean()) + 0.5 * s2 * s2 * (f - f.mean())
    return value, integrand


FULL_SPACE_CLOSED_FORMS: dict[str, Callable[[FullSpaceMoments, float, float], Terms]] = {
    "gm_full": gm_full,
}
"""Full-space closed forms: name → ``(moments at k, a_k, σ) -> Terms``."""


def _check_registry() -> None:
    """Every registered estimator has its arithmetic here (import-time check)."""
    for name, e in ESTIMATORS.items():
        have = name in SUBSPACE_CELLS if e.space == SUBSPACE else (
            name in FULL_SPACE_PROBES or name in FULL_SPACE_CLOSED_FORMS if e.space == FULL_SPACE else True)
        if not have:
            raise RuntimeError(f"estimator {name!r} has a registry entry but no engine function")


# ------------------------------------------------------------- per-sample derivatives
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

    def f(z: Tensor, sample: Batch) -> Tensor:
        return problem.sample_loss(w0 + Ud @ z, sample)

    g = torch.zeros(idx.numel(), D, dtype=torch.float64, device=problem.device)
    H = torch.zeros(idx.numel(), D, D, dtype=torch.float64, device=problem.device)
    # D tangents per sample: keep chunk · D per-sample N-vectors ≤ batch_size;
    # a data-parallel problem computes its chunks and sums the rows in place
    for a, b in problem.local_chunks(0, idx.numel(), max(1, problem.batch_size // D)):
        batch = problem.sample_arguments(idx[a:b])
        in_dims = (None, tree_map(lambda x: 0, batch))
        # jacfwd over grad, not over jacrev: torch 2.13's jacfwd(jacrev(.))
        # gets layer_norm's second derivative wrong (pytorch#196700)
        g[a:b] = vmap(grad(f), in_dims=in_dims)(z0, batch).double()
        H[a:b] = vmap(jacfwd(grad(f)), in_dims=in_dims)(z0, batch).double()
    problem.all_reduce(g)
    problem.all_reduce(H)
    return g, 0.5 * (H + H.transpose(1, 2))


_check_registry()
