"""The missed-eigenvalue guard and its probability bound.

Small residuals certify that each Ritz value ``θ_i`` is near *some*
eigenvalue of ``A`` (N × N), not that no larger one was skipped: a single
Krylov sequence can miss an eigenvalue of a dense bulk, and never sees the
second copy of a repeated one. The guard checks the found pairs
``(Θ, U)`` (U: N × D') on the deflated operator

    P A P,   P = I − U Uᵀ,

by ``j`` single-vector Lanczos steps from a uniformly random unit start
``x_0 ⟂ U``. By Cauchy interlacing its top Ritz value is a lower bound on
the largest eigenvalue of ``P A P`` on ``range(P)`` — the largest eigenvalue
not yet found — so if it exceeds the level

    ℓ = θ_D + tol · |θ_1|

an eigenvalue was missed. The repair solves for the missed pairs, not ``D``
new ones: as many as the guard has Ritz values above ``ℓ``
(:func:`missed_count`; by interlacing at least that many eigenvalues lie
there) plus one, on ``P A P`` from the guard's top Ritz vector, to ``tol``.
The one more is the nearest eigenvalue below the level: deflated, it no
longer sits just under ``ℓ``, where the next guard's bound would need many
steps (at tol 0.1 on a spread spectrum, a 10-step bound of 0.04 instead of
0.28). The ``D`` pairs of a full re-solve cost far more and their lower ones
fall below the level and are dropped anyway: on the quick demo's tiny-gpt
solve, 2 pairs for 15 products instead of 16 for 61, 87 products in all
against 129, certified at 0.05 (``benchmarks/demo_eigensolve.py``).
The merged pairs are re-orthogonalised against ``U``; a merged pair
``x ⟂ U`` has the exact residual
``‖A x − θ x‖² = ‖P A P x − θ x‖² + ‖S Fᵀ x‖²``, because
``Uᵀ A x = S Fᵀ x`` for the residual factor ``A U − U Θ = F Sᵀ`` of the
found pairs (:func:`_under_A`; when that leak takes a pair over ``tol``,
the pair is solved once more to the tolerance the leak leaves). Then the
guard repeats on the merged set, with the level of its ``D``-th value; any
missed eigenvalue the repair did not reach is the next round's.

What is certified. A pair *converged* when its residual is within ``tol``
and the guard found no miss it could not repair. The guard adds the miss
bound (below): the probability, over its random start, that an eigenvalue
beyond the level went unseen. Given a bound ``β``
(``max_miss_probability``) the guard runs until its bound falls to ``β``
(or its steps run out: then not certified), and the result is *certified at
miss probability ≤ β*: an event of probability at most ``β`` whatever the
spectrum, also for the stopped run (a miss needs ``c² ≤ 1/K_j(ℓ)`` at the
stopping step, and ``K_j(ℓ)`` is then at least the ``β``-quantile's
reciprocal). Without a bound the guard's fixed steps decide and the bound
they reached is reported, not certified against.

A passing guard is probabilistic, like every Krylov method; how unlikely a
miss is, each result states. Let ``T`` (j, j) be the guard's tridiagonal
matrix and ``p_i`` the orthonormal polynomials of its start's spectral
measure ``Σ (vᵀx_0)² δ_λ``. Every eigenpair ``(λ, v)`` of ``P A P`` has

    (vᵀx_0)² ≤ 1 / K_j(λ),   K_j(t) = Σ_{i<j} p_i(t)²

(:func:`christoffel_kernel`, the reciprocal Christoffel function), and
``K_j`` grows above the top Ritz value. So an eigenvalue ``≥ ℓ`` hides from
a passing guard only if the random start's component on it is that small;
with ``c² ~ Beta(1/2, (dim − 1)/2)`` for ``dim = N − D'`` that has the
probability

    P(c² ≤ 1 / K_j(ℓ)) = I_{1/K_j(ℓ)}(1/2, (dim − 1)/2)

(:func:`miss_probability`), for any spectrum. It is reported as
:attr:`~curvprobe.linalg.result.Eigenspace.miss_probability`.

Stop rule (:func:`guard_stop_rule`): the guard runs all its steps unless a
miss shows (top Ritz value above ``ℓ``) or, when a target bound is given, the
bound at ``ℓ`` falls to it. Its own top Ritz pair converging is no reason to
stop: that pair converges to the top of what the start sees, which says
nothing about what it does not. Only an invariant subspace of the start
(relative residual :data:`GUARD_TOL`) ends it early. How many steps the
bound needs in practice, and the failures that shaped these rules, are in
``docs/performance.md``.

Storage. With a float64 basis the guard run keeps its ``j`` Lanczos vectors
(full reorthogonalisation) and its bound is ``1/K_j``. A float32 basis marks
a memory-bound solve, whose guard is streamed
(:func:`streamed_guard_run`): the three-term recurrence with no stored
basis, and the bound from the measured norm of the kernel vector
``k_j(M) x_0`` — the same number in exact arithmetic, and still a bound when
orthogonality is lost. Its repairs start from that kernel vector.

Both ends (``which``, :data:`~curvprobe.linalg._krylov.WHICH`). The guard
checks an interval ``[ℓ_lo, ℓ_hi]`` (:func:`guard_levels`): an eigenvalue of
``P A P`` outside it was missed. ``"largest"``: ``ℓ_hi = θ_D + tol·s``,
``ℓ_lo = −∞`` (the rule above); ``"smallest"``: ``ℓ_lo = θ_(D) − tol·s`` (the
D-th smallest), ``ℓ_hi = +∞``; ``"both_ends"``: ``ℓ_hi`` from the ``⌈D/2⌉``-th
largest and ``ℓ_lo`` from the ``⌊D/2⌋``-th smallest; ``"magnitude"``:
``ℓ_hi = −ℓ_lo = |θ|_(D) + tol·s``, the D-th largest ``|θ|``. One guard run
sees both ends of ``P A P`` (its bottom Ritz value is an upper bound on the
smallest eigenvalue not yet found, as its top one is a lower bound on the
largest), and ``K_j`` grows below its smallest Ritz value as it does above
the largest, so the miss bound of a two-sided guard is the sum of the bounds
at ``ℓ_hi`` and ``ℓ_lo`` (a union bound). A miss is repaired at its end
(:func:`~curvprobe.linalg.lanczos.thick_restart_lanczos` with
``which="largest"`` or ``"smallest"`` from the guard's extreme Ritz vector).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from scipy.special import betainc
from torch import Tensor

from curvprobe.core.operators import DeflatedOperator, LinearOperator
from curvprobe.linalg._krylov import (
    KrylovRun,
    append_columns_,
    basis_t_matmul,
    orthonormalize_against,
    random_unit,
    subtract_basis_matmul_,
)
from curvprobe.linalg.lanczos import thick_restart_lanczos

REPAIR_SPARE = 2
"""Free float32 columns a memory-bound (float32-basis) solve keeps after its
found vectors for the pairs of a repair (one missed eigenvalue and one
more), so the merge copies nothing (``KrylovRun.spare``)."""

GUARD_TOL = 1e-10
"""The guard stops on its own top Ritz pair only at this relative residual:
an invariant subspace of the start, past which Lanczos would go on from
random vectors outside the deflated range."""


def christoffel_kernel(T: Tensor, t: float) -> float:
    """``K_j(t) = Σ_{i<j} p_i(t)²`` for the spectral measure of a Lanczos start.

    ``T`` (j, j) is the projected matrix of ``j`` single-vector Lanczos steps
    from a unit vector ``x_0`` without restart: diagonal ``α``, first
    super-diagonal ``β``. The ``p_i`` are the orthonormal polynomials of the
    measure ``Σ (vᵀx_0)² δ_λ`` over eigenpairs ``(λ, v)`` of ``A``:
    ``β_{i+1} p_{i+1}(t) = (t − α_i) p_i(t) − β_i p_{i−1}(t)``, ``p_0 = 1``.
    ``K_j(t)`` is the largest ``p(t)² / ‖p(A) x_0‖²`` over polynomials of
    degree < j (Gauss quadrature on ``T`` is exact for degree ≤ 2j − 1), so
    every eigenpair has ``(vᵀx_0)² ≤ 1 / K_j(λ)``: the start's weight on an
    eigenvalue the run did not see. Infinite when the run found an invariant
    subspace (``x_0`` has no weight off its Ritz values).

    The recurrence is evaluated forward, which is stable for ``t`` at or above
    the largest Ritz value (every ``p_i`` grows there: the guard's use); near
    an isolated Ritz value inside the spectrum it overestimates.
    """
    alpha, beta = T.diagonal().tolist(), T.diagonal(1).tolist()
    floor = 1e-14 * max(float(T.abs().max()), 1e-300)
    prev, cur, total = 0.0, 1.0, 1.0
    for i, b in enumerate(beta):
        if b <= floor:
            return math.inf
        prev, cur = cur, ((t - alpha[i]) * cur - (beta[i - 1] if i else 0.0) * prev) / b
        total += cur * cur
        if not math.isfinite(total):
            return math.inf
    return total


def miss_probability(kernel: float, dim: int) -> float:
    """``P(c² ≤ 1 / kernel)`` for ``c`` the component of a uniformly random
    unit vector of a ``dim``-dimensional space on any fixed unit vector
    (``c² ~ Beta(1/2, (dim − 1)/2)``): with ``kernel = K_j(t)`` of a guard
    run (:func:`christoffel_kernel`), the probability over its random start
    that an eigenvalue ≥ ``t`` stayed below the run's top Ritz value."""
    if dim <= 1:
        return float(kernel <= 1.0)
    return float(betainc(0.5, 0.5 * (dim - 1), min(1.0, 1.0 / kernel)))


def guard_levels(values: Tensor, D: int, tol: float, scale: float, which: str) -> tuple[float, float]:
    """The guard's interval ``(ℓ_lo, ℓ_hi)`` for found Ritz values ``values``
    (D',), ``D' ≥ D``: an eigenvalue outside it that the found pairs do not
    hold was missed (see the module docstring; ``s = scale``)."""
    desc = values.sort(descending=True).values
    if which == "largest":
        return -math.inf, float(desc[D - 1]) + tol * scale  # θ_D + tol·|θ_1|
    if which == "smallest":
        return float(desc[-D]) - tol * scale, math.inf
    if which == "both_ends":
        low = float(desc[-(D // 2)]) - tol * scale if D // 2 else -math.inf
        return low, float(desc[(D + 1) // 2 - 1]) + tol * scale
    level = float(values.abs().sort(descending=True).values[D - 1]) + tol * scale
    return -level, level


def deflation_shift(low: float, high: float, scale: float, which: str) -> float:
    """Where the guard's deflated operator puts the found directions
    (:class:`~curvprobe.core.operators.DeflatedOperator`): at 0 for
    ``"largest"`` (the rule since the first release), at ``s`` for
    ``"smallest"``, at the middle of ``[ℓ_lo, ℓ_hi]`` for ``"both_ends"``
    and at 0 for ``"magnitude"`` — inside the interval the guard does not
    search, so round-off in ``span(V)`` cannot pass for a missed eigenvalue."""
    if which == "smallest":
        return scale
    if which == "both_ends" and math.isfinite(low):
        return 0.5 * (low + high)
    return 0.0


def guard_miss_probability(T: Tensor, low: float, high: float, dim: int) -> float:
    """Miss bound of a guard run with projected matrix ``T`` for the interval
    ``[low, high]``: :func:`miss_probability` of :func:`christoffel_kernel`
    at each finite end, summed (a union bound over the two ends), at most 1."""
    total = 0.0
    if math.isfinite(high):
        total += miss_probability(christoffel_kernel(T, high), dim)
    if math.isfinite(low):
        total += miss_probability(christoffel_kernel(T, low), dim)
    return min(1.0, total)


def guard_stop_rule(level: float, dim: int, target: float | None, *,
                    low: float = -math.inf) -> Callable[[Tensor, float], bool]:
    """Stop rule of a guard run, as the ``until`` of
    :func:`~curvprobe.linalg.lanczos.thick_restart_lanczos`.

    ``until(T, θ_1)`` is true when the top Ritz value ``θ_1`` exceeds
    ``level`` or the bottom one of ``T`` falls below ``low`` (an eigenvalue
    was missed), or the miss bound :func:`guard_miss_probability` fell to
    ``target`` (if given). Not the convergence of its own extreme Ritz
    pairs: they converge to the ends of what the start vector sees, which
    says nothing about what it does not.
    """

    def until(T: Tensor, top: float) -> bool:
        if top > level or (low > -math.inf and float(torch.linalg.eigvalsh(T)[0]) < low):
            return True
        return target is not None and guard_miss_probability(T, low, level, dim) <= target

    return until


def missed_count(T: Tensor, low: float, high: float, top: bool) -> int:
    """How many eigenvalues a failed guard run with projected matrix ``T``
    proved missed at one end: its Ritz values above ``high`` (``top``) or
    below ``low``, at least 1. By Cauchy interlacing the ``i``-th largest
    Ritz value is at most the ``i``-th largest eigenvalue of the deflated
    operator (and likewise from below), so at least that many lie beyond the
    level: the repair solves for those and one more."""
    theta = torch.linalg.eigvalsh(T)
    count = int((theta > high).sum()) if top else int((theta < low).sum())
    return max(count, 1)


@dataclasses.dataclass
class GuardResult:
    """The pairs after the guard, and its verdict.

    Attributes
    ----------
    values : Tensor (D',) float64
        Ritz values, ``D' ≥ D``: the run's, then those of each repair
        (not sorted).
    vectors : Tensor (N, D') float64
        Orthonormal Ritz vectors.
    residuals : Tensor (D',) float64
        Absolute residuals ``‖A u − θ u‖``.
    guard_value : float
        Top Ritz value of the last guard run (NaN if none ran).
    miss_probability : float
        :func:`guard_miss_probability` of the passing guard run at its
        levels (NaN if no guard passed).
    certified : bool
        A guard passed (and, with a target, its bound reached it), or the
        found pairs leave no complement to search.
    repaired : bool
        Pairs were merged from outside the run's basis (which then no longer
        spans them).
    guard_low : float
        Bottom Ritz value of the last two-sided guard run (NaN for
        ``which="largest"``, whose guard checks the top only).
    spare : int or None
        Free columns after ``vectors`` in the buffer they own (``KrylovRun.spare``).
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    guard_value: float
    miss_probability: float
    certified: bool
    repaired: bool
    guard_low: float = math.nan
    spare: int | None = None


def missed_eigenvalue_guard(op: LinearOperator, run: KrylovRun, D: int, *, tol: float,
                            steps: int, max_rounds: int, max_miss_probability: float | None,
                            basis_size: int, max_matvecs: int, generator: torch.Generator,
                            which: str = "largest", scale: float | None = None,
                            basis_dtype: torch.dtype = torch.float64) -> GuardResult:
    """Check a solver run for missed eigenvalues beyond its ``D``-th, and repair it.

    Parameters
    ----------
    op : LinearOperator
        The symmetric operator ``A`` (N × N) the run solved.
    run : KrylovRun
        At least ``D`` Ritz pairs of ``op`` with the residual factor ``F, S``.
    D : int
        Number of wanted eigenpairs: the levels are :func:`guard_levels`.
    tol : float
        Relative tolerance of the solve (levels and repairs).
    steps : int
        Lanczos steps per guard run (0 disables the guard: not certified).
    max_rounds : int
        Repairs before giving up the certificate.
    max_miss_probability : float, optional
        Certify only if the miss bound falls to this level; the guard run
        then stops as soon as it does.
    basis_size : int
        Basis bound of the solve; a repair's is :func:`repair_basis_size`.
    max_matvecs : int
        Operator products the guard may spend, repairs included.
    generator : torch.Generator
        Draws the guard's random starts.
    which : {"largest", "smallest", "both_ends", "magnitude"}
        The end(s) the run solved for; the guard checks the same.
    scale : float, optional
        The scale ``s`` of the levels and repairs (default ``max |θ|`` of the run).
    basis_dtype : torch.dtype
        Basis storage of the guard and repair runs. With float32 the found
        vectors are float32 (deflated exactly, :func:`deflate`), a repair's
        pairs merge as estimates and the caller certifies the result.

    Returns
    -------
    GuardResult
    """
    n = op.shape[0]
    start = op.num_matvecs
    values, vectors, residuals = run.values, run.vectors, run.residuals
    scale = float(values.abs().max()) if scale is None else scale
    F, S, spare = run.F, run.S, run.spare
    guard_value, guard_low, miss, certified, repaired = math.nan, math.nan, math.nan, False, False
    for _ in range(max_rounds + 1):
        if steps <= 0 or vectors.shape[1] + 1 >= n:
            certified = steps > 0
            break
        spent = op.num_matvecs - start
        if spent >= max_matvecs:
            break
        low, high = guard_levels(values, D, tol, scale, which)
        deflated = deflate(op, vectors, deflation_shift(low, high, scale, which))
        dim = n - vectors.shape[1]
        guard = _guard_run(deflated, random_unit(n, generator, op.device, vectors), steps,
                           max_matvecs - spent, scale, (low, high, dim), max_miss_probability,
                           generator, basis_dtype)
        guard_value = guard.top
        guard_low = guard.bottom if low > -math.inf else math.nan
        if guard_value <= high and not guard_low < low:
            miss = guard.miss_probability
            certified = max_miss_probability is None or miss <= max_miss_probability
            break
        # eigenvalues beyond a level were missed: solve for those alone in the complement
        top = guard_value > high
        side, x0 = ("largest", guard.starts[0][:, None]) if top else ("smallest", guard.starts[1][:, None])
        nev = min(missed_count(guard.T, low, high, top) + 1, D, n - vectors.shape[1] - 1)
        extra = _solve_missed(deflated, (F, S), nev, x0, tol=tol,
                              basis_size=repair_basis_size(basis_size, vectors.shape[1], nev, basis_dtype,
                                                           spare or 0),
                              max_matvecs=max(max_matvecs - (op.num_matvecs - start), 1),
                              generator=generator, scale=scale, which=side, basis_dtype=basis_dtype)
        (values, vectors, residuals, F, S), spare = _merge((values, vectors, residuals, F, S), extra, spare)
        repaired = True  # the merged pairs lie outside the run's basis
    return GuardResult(values, vectors, residuals, guard_value, miss, certified, repaired, guard_low, spare)


def repair_basis_size(m: int, found: int, nev: int, basis_dtype: torch.dtype, spare: int = 0) -> int:
    """Basis bound of a repair solving ``nev`` pairs beside ``found`` vectors
    and ``spare`` free columns: the solve's ``m`` with a float64 basis; with
    a float32 one (a memory-bound solve, whose found vectors are float32
    too) the rows those columns displaced, less two for the deflated
    operator's float64 input and product, ``m − found − spare − nev − 2``
    (at least ``2 nev + 2``), so that a repair peaks no higher than the
    solve (:mod:`~curvprobe.linalg.memory`)."""
    if basis_dtype == torch.float64:
        return m
    return max(m - found - spare - nev - 2, 2 * nev + 2)


class RoundedDeflatedOperator(DeflatedOperator):
    """:class:`~curvprobe.core.operators.DeflatedOperator` for found vectors
    ``V`` (N, r) stored in float32, orthonormal only to their rounding
    (``VᵀV = I + O(10⁻⁷)``): the projector is the exact orthogonal one onto
    the complement of ``span(V)``, ``P = I − V G⁻¹ Vᵀ`` with ``G = VᵀV``
    (r, r) in float64, and the shift acts as ``c V G⁻¹ Vᵀ``. Applied in
    float64 row chunks (:func:`~curvprobe.linalg._krylov.basis_t_matmul`,
    :func:`~curvprobe.linalg._krylov.subtract_basis_matmul_`): no float64
    copy of ``V``; beside the product, one (N, b) float64 copy of the input.
    The guard's certificate is then about ``span(V)`` exactly, whatever the
    rounding of its basis."""

    def __init__(self, op: LinearOperator, V: Tensor, shift: float = 0.0) -> None:
        super().__init__(op, V, shift)
        self.gram_inverse = torch.cholesky_inverse(torch.linalg.cholesky(basis_t_matmul(V, V)))

    def _coefficients(self, X: Tensor) -> Tensor:
        """``G⁻¹ Vᵀ X`` (r, b) float64."""
        return self.gram_inverse @ basis_t_matmul(self.V, X)

    def _matmat(self, X: Tensor) -> Tensor:
        C = self._coefficients(X)
        out = self.op.matmat(subtract_basis_matmul_(X.clone(), self.V, C))
        # P (A P X) + c V C in one pass over V: out − V (G⁻¹ Vᵀ out − c C)
        return subtract_basis_matmul_(out, self.V, self._coefficients(out) - self.shift * C)


def deflate(op: LinearOperator, V: Tensor, shift: float) -> DeflatedOperator:
    """``op`` deflated on ``span(V)`` with the shift: float64 ``V`` is
    orthonormal (:class:`~curvprobe.core.operators.DeflatedOperator`), a
    float32 one is projected exactly (:class:`RoundedDeflatedOperator`)."""
    if V.dtype == torch.float64:
        return DeflatedOperator(op, V, shift)
    return RoundedDeflatedOperator(op, V, shift)


def _merge(found: tuple[Tensor, Tensor, Tensor, Tensor, Tensor], extra: KrylovRun, spare: int | None
           ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor, Tensor], int | None]:
    """The found ``(values, vectors, residuals, F, S)`` with the pairs of
    :func:`_solve_missed` appended (their residuals already under ``A``),
    and the free columns left (``KrylovRun.spare``): the vectors are written
    into the free columns of their buffer when there are enough
    (:func:`~curvprobe.linalg._krylov.append_columns_`), else concatenated
    into a new buffer with none."""
    values, vectors, residuals, F, S = found
    r = extra.vectors.shape[1]
    if spare is not None and spare >= r:
        vectors, spare = append_columns_(vectors, extra.vectors), spare - r
    else:
        vectors, spare = torch.cat([vectors, extra.vectors], dim=1), (None if spare is None else 0)
    return (torch.cat([values, extra.values]), vectors, torch.cat([residuals, extra.residuals]),
            torch.cat([F, extra.F], dim=1), torch.block_diag(S, extra.S)), spare


def _under_A(extra: KrylovRun, V: Tensor, factor: tuple[Tensor, Tensor]) -> tuple[KrylovRun, Tensor]:
    """A repair's pairs as pairs of ``A``, and their leaks ``‖S Fᵀ x‖`` (nev,).

    The vectors are re-orthogonalised against the found ``V`` (two
    Gram–Schmidt passes and a normalisation). A Krylov run on ``P A P``
    leaves ``range(P)`` by round-off only, but that round-off grows with the
    run's polynomial at the deflation shift (measured: ``‖Vᵀx‖ ≈ 10⁻⁵``
    after 13 steps on a bulk [0.9, 1] deflated to 0), and would accumulate
    over rounds. For a unit ``x`` with ``c = Vᵀx`` and ``r = P A P x − θ x``
    (so ``Vᵀr = −θ c``), ``x' = P x / ‖P x‖`` has
    ``‖P A P x' − θ x'‖² = (‖r‖² − θ² ‖c‖²) / (1 − ‖c‖²)``, and under ``A``
    ``‖A x' − θ x'‖² = ‖P A P x' − θ x'‖² + ‖S Fᵀ x'‖²`` with the found
    pairs' residual factor ``(F, S)``, since ``Vᵀ A x' = S Fᵀ x'`` for
    ``x' ⟂ V``: the returned residuals are exact up to round-off. (A float32
    repair's pairs do not come here: see :func:`_repair`.)"""
    F, S = factor
    c2 = (V.T @ extra.vectors).square().sum(dim=0)
    X = orthonormalize_against(extra.vectors, V)
    norms = X.norm(dim=0)
    X = X / norms
    inside = (extra.residuals**2 - extra.values**2 * c2).clamp_min(0) / norms**2
    leak = (S @ (F.T @ X)).norm(dim=0)
    return dataclasses.replace(extra, vectors=X, residuals=torch.sqrt(inside + leak**2)), leak


def _solve_missed(deflated: DeflatedOperator, factor: tuple[Tensor, Tensor], nev: int, x0: Tensor, *,
                  tol: float, basis_size: int, max_matvecs: int, generator: torch.Generator,
                  scale: float, which: str, basis_dtype: torch.dtype) -> KrylovRun:
    """The ``nev`` missed pairs at one end of the deflated operator
    (:func:`_repair` from ``x0``), as pairs of ``A`` (:func:`_under_A`).

    A pair solved to ``tol`` on ``P A P`` gains the leak ``‖S Fᵀ x‖`` under
    ``A``; when that takes a pair over ``tol · scale``, it is solved once more,
    from the sum of the pairs found, to the tolerance the leak leaves
    (``√((tol·s)² − leak²)``, with a 10 % margin) — a few steps from a start
    that close, instead of solving every repair tighter than it needs.
    """
    start, target = deflated.num_matvecs, tol * scale

    def solve(x: Tensor, rel_tol: float, budget: int) -> tuple[KrylovRun, Tensor]:
        extra = _repair(deflated, nev, x, tol=rel_tol, basis_size=basis_size, max_matvecs=budget,
                        generator=generator, scale=scale, which=which, basis_dtype=basis_dtype)
        if basis_dtype != torch.float64:
            return extra, torch.zeros_like(extra.values)
        return _under_A(extra, deflated.V, factor)

    extra, leak = solve(x0, tol, max_matvecs)
    left = max_matvecs - (deflated.num_matvecs - start)
    if bool((extra.residuals > target).any()) and bool((leak < target).all()) and left > 0:
        room = float(torch.sqrt(target**2 - leak**2).min()) * 0.9
        extra, _ = solve(extra.vectors.sum(dim=1, keepdim=True), room / scale, left)
    return extra


@dataclasses.dataclass
class GuardRun:
    """What one guard run tells :func:`missed_eigenvalue_guard`.

    Attributes
    ----------
    T : Tensor (j, j) float64
        The run's projected matrix (on the host).
    top, bottom : float
        Its largest and smallest Ritz values.
    miss_probability : float
        Its miss bound at the levels it checked.
    starts : tuple of two Tensors (N,) float64
        Where a repair at the top (first) or the bottom (second) starts:
        the extreme Ritz vectors of a stored run, the kernel vectors of a
        streamed one (:func:`streamed_guard_run`).
    """

    T: Tensor
    top: float
    bottom: float
    miss_probability: float
    starts: tuple[Tensor, Tensor]


def _guard_run(deflated: LinearOperator, x0: Tensor, steps: int, budget: int, scale: float,
               levels: tuple[float, float, int], target: float | None, generator: torch.Generator,
               basis_dtype: torch.dtype) -> GuardRun:
    """One guard run: stored with a float64 basis, streamed with a float32 one
    (a memory-bound solve)."""
    if basis_dtype == torch.float64:
        return _stored_guard_run(deflated, x0, steps, budget, scale, levels, target, generator)
    return streamed_guard_run(deflated, x0, steps, budget, scale, levels, target)


def _stored_guard_run(deflated: LinearOperator, x0: Tensor, steps: int, budget: int, scale: float,
                      levels: tuple[float, float, int], target: float | None,
                      generator: torch.Generator) -> GuardRun:
    """One guard run of at most ``steps`` single-vector Lanczos steps with
    full reorthogonalisation (its ``j`` vectors stored in float64) on the
    deflated operator from ``x0``; ``levels = (ℓ_lo, ℓ_hi, dim)``. A
    two-sided run (finite ``ℓ_lo``) wants both ends; its extreme Ritz
    vectors are the repair starts."""
    low, high, dim = levels
    two_sided = low > -math.inf
    run = thick_restart_lanczos(deflated, 2 if two_sided else 1, x0[:, None], tol=GUARD_TOL,
                                basis_size=steps, max_matvecs=min(steps, budget),
                                generator=generator, scale=scale,
                                until=guard_stop_rule(high, dim, target, low=low),
                                which="both_ends" if two_sided else "largest")
    return GuardRun(run.T, float(run.values[0]), float(torch.linalg.eigvalsh(run.T)[0]),
                    guard_miss_probability(run.T, low, high, dim),
                    (run.vectors[:, 0], run.vectors[:, -1]))


def streamed_guard_run(deflated: LinearOperator, x0: Tensor, steps: int, budget: int, scale: float,
                       levels: tuple[float, float, int], target: float | None) -> GuardRun:
    """One guard run in bounded memory: Lanczos by its three-term recurrence
    (no stored basis, no reorthogonalisation beyond the current vector), its
    miss bound from a kernel vector per level instead of orthogonality.

    The run keeps ``q_{i−1}, q_i`` and the product (N,) float64, and for each
    finite level ``t`` of ``levels = (ℓ_lo, ℓ_hi, dim)`` the kernel vector
    ``y_t = Σ_{i<j} p_i(t) q_i``, with ``p_i`` the polynomials of the run's
    own coefficients (:func:`christoffel_kernel`). The recurrence makes
    ``q_i = p_i(M) x_0`` for ``M`` the deflated operator, whatever the loss
    of orthogonality, so ``y_t = k_t(M) x_0`` with ``k_t(s) = Σ p_i(t) p_i(s)``
    and, for every eigenpair ``(λ, v)`` of ``M``,

        (vᵀx_0) k_t(λ) = vᵀ y_t,   so   (vᵀx_0)² ≤ ‖y_t‖² / k_t(λ)².

    ``k_t`` (the Christoffel–Darboux kernel at ``t``) has its ``j − 1`` zeros
    below the top Ritz value when ``t`` is above it (they are the other nodes
    of the Gauss–Radau rule fixing ``t``), so ``|k_t(λ)| ≥ k_t(t) = K_j(t)``
    for every ``λ`` beyond ``t``: an eigenvalue beyond the level hides only if
    ``c² ≤ ‖y_t‖² / K_j(t)²``, the bound :func:`miss_probability` takes at
    the effective kernel ``K_j(t)² / ‖y_t‖²``. In exact arithmetic
    ``‖y_t‖² = K_j(t)`` and this is the stored guard's bound; in floating
    point ``‖y_t‖`` is measured, so lost orthogonality (ghost Ritz values)
    weakens the bound instead of voiding it. Round-off enters only through
    the recurrence's local errors (float64, ``≈ 10⁻¹⁶ ‖M‖`` per step).

    The stop rule is :func:`guard_stop_rule`'s: a Ritz value beyond a level
    (a miss), the bound at ``target``, an invariant subspace (next
    coefficient below :data:`GUARD_TOL` · ``scale``: bound 0) or ``steps``
    (within ``budget``). A repair starts from the normalised kernel vector of
    the level that failed, which weights the eigenvalues beyond it by
    ``k_t(λ)²``.
    """
    low, high, dim = levels
    ends = [t for t in (high, low) if math.isfinite(t)]
    q_prev, q = torch.zeros_like(x0), x0.clone()
    kernels = [x0.clone() for _ in ends]
    polys = [(0.0, 1.0, 1.0) for _ in ends]  # (p_{i−1}(t), p_i(t), K_{i+1}(t))
    alpha: list[float] = []
    beta: list[float] = []
    last = max(min(steps, budget), 1)
    while True:
        w = deflated.matvec(q)
        a = float(q @ w)
        w.add_(q, alpha=-a)
        if beta:
            w.add_(q_prev, alpha=-beta[-1])
        again = float(q @ w)  # one local reorthogonalisation: the recurrence holds with α + again
        w.add_(q, alpha=-again)
        alpha.append(a + again)
        T = _tridiagonal(alpha, beta)
        theta, b = torch.linalg.eigvalsh(T), float(w.norm())
        miss = 0.0 if b <= GUARD_TOL * scale else _streamed_miss(polys, kernels, dim)
        if (float(theta[-1]) > high or float(theta[0]) < low or b <= GUARD_TOL * scale
                or len(alpha) >= last or (target is not None and miss <= target)):
            starts = _repair_starts(kernels, ends, high, q)
            return GuardRun(T, float(theta[-1]), float(theta[0]), miss, starts)
        q_prev, q, previous = q, w.div_(b), (beta[-1] if beta else 0.0)
        beta.append(b)
        for e, t in enumerate(ends):
            p_prev, p, total = polys[e]
            p_next = ((t - alpha[-1]) * p - previous * p_prev) / b
            polys[e] = (p, p_next, total + p_next * p_next)
            kernels[e].add_(q, alpha=p_next)


def _tridiagonal(alpha: list[float], beta: list[float]) -> Tensor:
    """The (j, j) symmetric tridiagonal matrix with diagonal ``alpha`` (j)
    and off-diagonal ``beta`` (j − 1), float64 on the host."""
    off = torch.tensor(beta, dtype=torch.float64)
    return torch.diag(torch.tensor(alpha, dtype=torch.float64)) + torch.diag(off, 1) + torch.diag(off, -1)


def _streamed_miss(polys: list[tuple[float, float, float]], kernels: list[Tensor], dim: int) -> float:
    """The streamed guard's miss bound: :func:`miss_probability` at the
    effective kernel ``K_j(t)² / ‖y_t‖²`` of each level, summed, at most 1."""
    return min(1.0, sum(miss_probability((total / max(float(y.norm()), 1e-300)) ** 2, dim)
                        for (_, _, total), y in zip(polys, kernels, strict=True)))


def _repair_starts(kernels: list[Tensor], ends: list[float], high: float, q: Tensor) -> tuple[Tensor, Tensor]:
    """Repair starts of a streamed run, (N,) each: the kernel vector of the
    top level and of the bottom one, normalised in place (the current
    Lanczos vector for an end without a level)."""
    unit = [y.div_(y.norm()) for y in kernels]
    top = unit[0] if math.isfinite(high) else q
    bottom = unit[-1] if len(ends) == 2 or not math.isfinite(high) else q
    return top, bottom


def _repair(deflated: DeflatedOperator, nev: int, x0: Tensor, *, tol: float, basis_size: int,
            max_matvecs: int, generator: torch.Generator, scale: float, which: str,
            basis_dtype: torch.dtype) -> KrylovRun:
    """The missed pairs at one end of the deflated operator, from the guard's
    extreme Ritz vector ``x0`` (N, 1). With a float32 basis the vectors are
    projected off ``span(V)`` (its round-off) in float64, normalised and
    stored in float32 beside the found ones; their values and residuals are
    the run's estimates and the residual factor is empty: the solve
    certifies every pair it returns from real products at its end
    (:func:`~curvprobe.linalg._krylov.explicit_pairs`), none here."""
    extra = thick_restart_lanczos(deflated, nev, x0, tol=tol, basis_size=basis_size,
                                  max_matvecs=max_matvecs, generator=generator, scale=scale,
                                  which=which, basis_dtype=basis_dtype)
    if basis_dtype == torch.float64:
        return extra
    X = orthonormalize_against(extra.vectors.to(torch.float64), deflated.V)
    X = X.div_(X.norm(dim=0)).to(basis_dtype)
    return dataclasses.replace(extra, vectors=X, F=extra.F.new_zeros(X.shape[0], 0),
                               S=extra.S.new_zeros(X.shape[1], 0))
