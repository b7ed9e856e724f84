"""The stabilization measurement as data: the estimator registry and a validated spec.

This module imports no torch: the config, the command line, the report and
the figures read the registry without loading a model.

Notation (``docs/concepts.md``): ``δ_k(w) = L_{k+1}(w) − L_k(w)``, the
criterion ``Δ_p(k+1) = E_{w~q} |δ_k(w)|^p`` under a probing law ``q`` with
scale ``σ``, the top-D eigenspace ``U_D`` of ``H^(k)(w*)`` and the quadratic
surrogate ``q_k(z) = a_k + c_kᵀz + ½ zᵀB_k z`` of ``δ_k(w* + U_D z)``.

Every estimator has one :class:`Estimator` entry in :data:`ESTIMATORS`; its
arithmetic is one function in :mod:`curvprobe.criteria.engine` registered
under the same name. ``docs/architecture.md`` shows how to add one.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT_ESTIMATORS", "ESTIMATORS", "FULL_SPACE", "NOISE_STREAMS", "POINT", "SUBSPACE",
           "SUBSPACE_MODES", "Estimator", "StabilizationSpec", "default_estimators", "estimator_units",
           "mc_samples_argument", "surrogate_only"]

POINT, FULL_SPACE, SUBSPACE = "point", "full", "subspace"
"""Where an estimator probes: at ``w*``, in the full space, or inside ``span(U_D)``."""

SUBSPACE_MODES = ("per_k", "fixed", "pooled")
"""``per_k``: ``U_D`` from ``H^(k)`` at every k (warm-started); ``fixed``: one
``U_D`` from ``H^(K)``, ``K = max(ks)``, for every k; ``pooled``: one ``U_D``
from the Hessian of all ``K + 1`` samples the measurement reads, for every k —
the same set of samples in every ordering, so one eigenspace serves every
ordering (``orderings > 1`` requires it)."""

NOISE_STREAMS: Mapping[str, int] = MappingProxyType({"subspace": 1, "full_mc": 2, "sphere": 3,
                                                     "validity": 7, "ordering": 11, "gm_full": 13})
"""Noise stream of each family of draws (:func:`curvprobe.criteria.engine.noise`).

Draw ``s`` of stream ``t`` under seed ``r`` is a function of ``(r, t, s)``
only: every subspace estimator shares stream ``subspace`` (common random
numbers across k, σ and D), each full-space probe has its own, and the
quadratic-validity sweep has ``validity``. Sample orderings
(:func:`curvprobe.criteria.engine.orderings`) are keyed by
``(ordering_seed, ordering, r)``."""


@dataclass(frozen=True)
class Estimator:
    """One estimator of the stabilization criterion.

    Attributes
    ----------
    name : str
        Its value of the ``estimator`` coordinate.
    label : str
        Short label for tables and figure legends.
    long_name : str
        What it estimates, with its formula.
    space : {"point", "full", "subspace"}
        Where it probes (:data:`POINT`, :data:`FULL_SPACE`, :data:`SUBSPACE`).
    method : {"exact", "monte_carlo", "closed_form", "control_variate"}
        How: ``exact`` is one evaluation, ``monte_carlo`` a mean over draws
        with a standard error, ``closed_form`` a formula (no draws, standard
        error 0), ``control_variate`` a closed form plus a Monte Carlo
        correction.
    stream : str or None
        Key of :data:`NOISE_STREAMS` of its draws (None: no draws).
    moment : {"p", "1"}
        The power of ``|δ|`` it averages: the criterion's order ``p``
        (value in loss^p) or 1 (value in loss).
    p2_only : bool
        Defined for ``p = 2`` only (the Gaussian moment is ``E q²``).
    true_increments : bool
        Needs the true ``δ_k`` at the subspace draws (``S`` forward passes
        over ``k + 1`` samples per (σ, D)), not only the surrogate.
    default : bool
        Run when the caller does not name the estimators.
    """

    name: str
    label: str
    long_name: str
    space: str
    method: str
    stream: str | None
    moment: str = "p"
    p2_only: bool = False
    true_increments: bool = False
    default: bool = True

    @property
    def monte_carlo(self) -> bool:
        """Whether its value is a mean over draws (needs ``mc_samples ≥ 2``)."""
        return self.method in ("monte_carlo", "control_variate")

    def units(self, p: float) -> str:
        """Units of its value and standard error for criterion order ``p``."""
        return "loss" if self.moment == "1" else f"loss^{p:g}"


ESTIMATORS: Mapping[str, Estimator] = MappingProxyType({e.name: e for e in (
    Estimator("delta1", "Δ₁ (Dirac)", "pointwise criterion Δ₁ = |δ_k(w*)|", POINT, "exact", None,
              moment="1"),
    Estimator("full_mc", "Δ₂ full space (MC)", "Δ_p = E|δ_k(w* + ε)|^p, ε ~ N(0, σ² I_N)",
              FULL_SPACE, "monte_carlo", "full_mc"),
    Estimator("gm_full", "GM full space (two-level Hutchinson)",
              "E q_k(ε)², ε ~ N(0, σ² I_N), closed form with tr B_k and ‖B_k‖²_F by two-level Hutchinson",
              FULL_SPACE, "monte_carlo", "gm_full", p2_only=True, default=False),
    Estimator("direct_mc", "Δ₂^(D) direct MC", "Δ_p^(D) = E|δ_k(w* + U_D z)|^p, z ~ N(0, σ² I_D)",
              SUBSPACE, "monte_carlo", "subspace", true_increments=True),
    Estimator("quad_mc", "quadratic MC", "surrogate E|q_k(z)|^p by Monte Carlo", SUBSPACE,
              "monte_carlo", "subspace"),
    Estimator("gm", "GM (closed form)", "Gaussian moment E q_k(z)² in closed form", SUBSPACE,
              "closed_form", None, p2_only=True),
    Estimator("cv_mc", "control variate", "Δ₂^(D) = GM + mean(δ_k(w_s)² − q_k(z_s)²)", SUBSPACE,
              "control_variate", "subspace", p2_only=True, true_increments=True),
    Estimator("sphere", "sphere (smoothed Δ₁)", "E|δ_k(w* + ε d)|, d uniform on the unit sphere",
              FULL_SPACE, "monte_carlo", "sphere", moment="1", default=False),
)})
"""The estimator registry, in the order results list them."""

DEFAULT_ESTIMATORS = tuple(name for name, e in ESTIMATORS.items() if e.default)
"""Estimators run when none are named (every registered one but ``sphere``)."""


def default_estimators(p: float) -> tuple[str, ...]:
    """:data:`DEFAULT_ESTIMATORS` defined at order ``p`` (without the p = 2-only ones otherwise)."""
    return tuple(n for n in DEFAULT_ESTIMATORS if p == 2 or not ESTIMATORS[n].p2_only)


def surrogate_only(names: Sequence[str]) -> list[str]:
    """The named estimators computed from the quadratic surrogate alone (no true increments):
    proxies of the criterion, meaningful only inside the validated quadratic regime."""
    return [n for n in names if ESTIMATORS[n].space == SUBSPACE and not ESTIMATORS[n].true_increments]


def estimator_units(names: Sequence[str], p: float) -> list[str]:
    """Units of each named estimator's value at order ``p``."""
    return [ESTIMATORS[n].units(p) for n in names]


def mc_samples_argument(mc_samples: int, num_samples: int | None, where: str) -> int:
    """``mc_samples``, or the deprecated ``num_samples`` (with a DeprecationWarning) if given.

    ``num_samples`` meant Monte Carlo draws in curvprobe 0.1; on a Problem it
    means data samples, so the measurements call draws ``mc_samples``.
    """
    if num_samples is None:
        return mc_samples
    warnings.warn(f"{where}(num_samples=...) is deprecated: Monte Carlo draws are mc_samples=... "
                  "(num_samples is the number of data samples of a Problem)",
                  DeprecationWarning, stacklevel=3)
    return num_samples


def _int_grid(name: str, values: Sequence[int], *, sort: bool) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or int(v) != v:
            raise ValueError(f"{name} must hold integers, got {v!r}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} is empty")
    if sort:
        out = sorted(set(out))
    elif any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"{name} must be sorted and without duplicates, got {out}")
    if out[0] < 1:
        raise ValueError(f"{name} must hold integers >= 1, got {out[0]}")
    return tuple(out)


def _orderings(value: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"orderings must be an integer >= 1, got {value!r}")
    return int(value)


def check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    """Probe scales: a non-empty sequence of positive finite numbers (order kept)."""
    out = tuple(float(s) for s in sigmas)
    if not out:
        raise ValueError("sigmas is empty")
    bad = [s for s in out if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"sigma must be positive and finite, got {bad}")
    return out


@dataclass(frozen=True)
class StabilizationSpec:
    """What to measure: the (k, σ, D, estimator) grid and how. Validated once, at construction.

    Parameters
    ----------
    ks : increasing ints ≥ 1
        Sample counts k of ``L_k`` (the criterion compares ``L_{k+1}`` with ``L_k``).
    sigmas : positive floats
        Probe scales σ (param); the sphere radius ε for ``sphere``.
    dims : ints ≥ 1
        Subspace dimensions D (sorted, duplicates dropped); one eigenspace of
        size ``max(dims)`` serves all.
    estimators : names from :data:`ESTIMATORS`, optional
        Duplicates dropped; None: :func:`default_estimators` at ``p``.
    mc_samples : int
        Monte Carlo draws S per (σ, D) (≥ 2 when a Monte Carlo estimator runs).
    p : float ≥ 1
        Order of the criterion; ``gm`` and ``cv_mc`` need ``p = 2``.
    subspace : {"per_k", "fixed", "pooled"} or None
        See :data:`SUBSPACE_MODES`. None (default): ``per_k`` with one
        ordering, ``pooled`` with several.
    seed : int
        Seeds every draw and the eigensolver.
    tol : float > 0
        Relative residual of the eigensolver.
    point_batch : int ≥ 1
        Perturbed points evaluated together (memory: that many N-vectors).
    eigen_options : mapping, optional
        Extra keywords of :func:`curvprobe.top_eigenspace` (not ``init``,
        ``tol``, ``seed``).
    resumable : bool
        ``per_k`` only. False (default): each k warm-starts from the previous
        k's whole Lanczos basis (HVPs on the new samples only) and accumulates
        ``Σ_{i≤k} g_i`` from the previous k. True: each k depends on the
        previous one only through its D eigenvectors (float64, CPU), which a
        runner can store and reload, so an interrupted and resumed run gives
        exactly the parts of an uninterrupted one (costs the gradient over
        the first k samples at every k and the carried basis's savings).
    orderings : int ≥ 1
        R orderings of the first ``K + 1`` samples: ordering 0 is the given
        order, orderings 1..R−1 uniform random permutations keyed by
        ``(ordering_seed, r)``. Every estimate is computed for each ordering
        from one set of per-sample losses (and, for the subspace estimators,
        one ``pooled`` eigenspace and one set of per-sample subspace
        derivatives); ``docs/estimators.md`` has the costs. R = 1 is the
        single-ordering measurement, unchanged.
    ordering_seed : int
        Seeds the permutations (independent of ``seed``, which seeds the
        probe draws).

    Raises
    ------
    ValueError
        Naming the first invalid field.
    """

    ks: tuple[int, ...]
    sigmas: tuple[float, ...]
    dims: tuple[int, ...] = (1, 4, 16)
    estimators: tuple[str, ...] | None = None
    mc_samples: int = 64
    p: float = 2.0
    subspace: str | None = None
    seed: int = 0
    tol: float = 1e-3
    point_batch: int = 8
    eigen_options: Mapping[str, Any] = field(default_factory=dict)
    resumable: bool = False
    orderings: int = 1
    ordering_seed: int = 0

    def __post_init__(self) -> None:
        p = float(self.p)
        if not (math.isfinite(p) and p >= 1):
            raise ValueError(f"p must be a finite number >= 1, got {self.p}")
        est = default_estimators(p) if self.estimators is None else tuple(dict.fromkeys(self.estimators))
        unknown = [e for e in est if e not in ESTIMATORS]
        if unknown:
            raise ValueError(f"unknown estimator(s) {unknown}; valid: {', '.join(ESTIMATORS)}")
        if not est:
            raise ValueError("estimators is empty")
        if p != 2 and any(ESTIMATORS[e].p2_only for e in est):
            only2 = [e for e in est if ESTIMATORS[e].p2_only]
            raise ValueError(f"estimators {only2} are defined for p = 2 only (got p = {p:g}); "
                             "drop them or use p = 2")
        mc = [e for e in est if ESTIMATORS[e].monte_carlo]
        if mc and int(self.mc_samples) < 2:
            raise ValueError(f"mc_samples must be >= 2 for a standard error of {mc}, got {self.mc_samples}")
        orderings = _orderings(self.orderings)
        subspace = self.subspace if self.subspace is not None else ("per_k" if orderings == 1 else "pooled")
        if subspace not in SUBSPACE_MODES:
            raise ValueError(f"unknown subspace mode {subspace!r}; valid: {', '.join(SUBSPACE_MODES)}")
        if orderings > 1 and subspace != "pooled" and any(ESTIMATORS[e].space == SUBSPACE for e in est):
            raise ValueError(f"orderings = {orderings} needs subspace = 'pooled' (one eigenspace of all "
                             f"K + 1 samples, the same in every ordering), got {subspace!r}: per-k or "
                             "fixed eigenspaces would need one eigensolve per ordering")
        if orderings > 1 and "gm_full" in est:
            raise ValueError("gm_full estimates one ordering (its HVPs run over contiguous samples): "
                             f"drop it or use orderings = 1, got {orderings}")
        if not (math.isfinite(float(self.tol)) and float(self.tol) > 0):
            raise ValueError(f"tol must be a positive number, got {self.tol}")
        if int(self.point_batch) < 1:
            raise ValueError(f"point_batch must be >= 1, got {self.point_batch}")
        reserved = {"init", "tol", "seed"} & set(self.eigen_options)
        if reserved:
            raise ValueError(f"eigen_options may not set {sorted(reserved)}: pass the warm start as "
                             "init=..., tol and seed as spec fields")
        values = {
            "ks": _int_grid("ks", self.ks, sort=False),
            "sigmas": check_sigmas(self.sigmas),
            "dims": _int_grid("dims", self.dims, sort=True),
            "estimators": est,
            "mc_samples": int(self.mc_samples),
            "p": p,
            "seed": int(self.seed),
            "tol": float(self.tol),
            "point_batch": int(self.point_batch),
            "eigen_options": MappingProxyType(dict(self.eigen_options)),
            "subspace": subspace,
            "orderings": orderings,
            "ordering_seed": int(self.ordering_seed),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------- views
    @property
    def max_k(self) -> int:
        """``K = max(ks)``: the measurement reads samples 1..K+1."""
        return self.ks[-1]

    @property
    def max_dim(self) -> int:
        """Size of the one eigenspace that serves every D."""
        return self.dims[-1]

    def names(self, space: str) -> tuple[str, ...]:
        """The requested estimators that probe in ``space`` (point, full, subspace)."""
        assert self.estimators is not None
        return tuple(e for e in self.estimators if ESTIMATORS[e].space == space)

    @property
    def full_space_names(self) -> tuple[str, ...]:
        """Requested estimators that do not depend on D (``point`` and ``full``)."""
        return self.names(POINT) + self.names(FULL_SPACE)

    @property
    def subspace_names(self) -> tuple[str, ...]:
        """Requested estimators inside ``span(U_D)``."""
        return self.names(SUBSPACE)

    @property
    def needs_true_increments(self) -> bool:
        """Whether some subspace estimator needs ``δ_k`` at the subspace draws."""
        return any(ESTIMATORS[e].true_increments for e in self.subspace_names)

    def check_problem(self, num_samples: int, num_params: int) -> None:
        """Check the grid against a problem of ``num_samples`` samples and N = ``num_params``."""
        if self.max_k > num_samples - 1:
            raise ValueError(
                f"ks must lie in [1, {num_samples - 1}]: the criterion compares L_(k+1) with L_k "
                f"and the problem has {num_samples} samples; got {self.ks[0]}..{self.max_k}")
        if self.subspace_names and self.max_dim >= num_params:
            raise ValueError(f"each D must satisfy 1 <= D < N = {num_params}, got {list(self.dims)}")

    def attrs(self) -> dict[str, Any]:
        """The spec as Dataset attrs (netCDF-safe scalars; the grid is in the coordinates).

        ``orderings`` and ``ordering_seed`` are added only with several orderings,
        so a single-ordering result keeps the attrs it always had."""
        out: dict[str, Any] = {"subspace": self.subspace, "seed": self.seed, "p": self.p,
                               "mc_samples": self.mc_samples, "tol": self.tol}
        if self.orderings > 1:
            out.update(orderings=self.orderings, ordering_seed=self.ordering_seed)
        return out
