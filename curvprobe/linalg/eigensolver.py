"""Top-D eigenspace of a symmetric operator, with certificates.

:func:`top_eigenspace` returns the ``D`` algebraically largest eigenpairs
``(θ_i, u_i)`` of an operator ``A`` (N × N) — for curvprobe, the Hessian
``H^(k)(w*)`` seen through exact HVPs — as an
:class:`~curvprobe.linalg.result.Eigenspace` (values (D,), vectors (N, D))
carrying its own certificate: the relative residuals

    r_i = ‖A u_i − θ_i u_i‖ / |θ_1|,

the number of operator products used, per-pair ``converged`` flags
(``r_i ≤ tol`` *and* the missed-eigenvalue guard passed) and, at a stated
miss bound ``max_miss_probability``, the certificate
(:attr:`~curvprobe.linalg.result.Eigenspace.certified`).

Method ``"lanczos"`` (default) composes the solvers of this package:

1. **Cold start** (``init=None``):
   :func:`~curvprobe.linalg.lanczos.thick_restart_lanczos` from a random unit
   vector, with a basis of at most ``basis_size`` vectors; residuals come
   from the Lanczos relation ``A Q = Q T + f eᵀ``: ``‖A u − θ u‖ = ‖f‖ |s_m|``.
2. **Warm start** (``init``, a previous subspace — the next k, the next
   checkpoint): :func:`~curvprobe.linalg.davidson.block_davidson` from that
   subspace. Its first block is one Rayleigh–Ritz step (``p`` products in one
   batched ``matmat``); if the subspace barely moved, that certifies. When
   a residual of that step exceeds 30 tol, Davidson blocks would cost more
   than Lanczos and are not tried: a Davidson result not within ``tol``
   continues by Lanczos from the sum of its Ritz vectors (warm then costs
   about the cold count plus the one batched block).
3. **Carried basis**: with ``keep_basis=True`` the result keeps the solver's
   final basis ``Q`` (all of it, not just the D Ritz vectors) and ``A Q``.
   Warm-started from such a result, an operator that can derive its image
   from the previous one
   (:meth:`~curvprobe.core.operators.LinearOperator.carry`: the Hessian over
   ``k > k_0`` leading samples at the same point,
   ``H^(k) Q = (k_0 H^(k_0) Q + (k − k_0) H_new Q) / k``) starts Davidson
   from all of ``Q`` with HVPs on the ``k − k_0`` new samples only —
   ``(k − k_0)/k`` of a product per vector, counted in
   :attr:`~curvprobe.linalg.result.Eigenspace.cost` — provided that costs at
   most ``D`` products (else the start is the D previous vectors).
4. **Guard**: :func:`~curvprobe.linalg.guard.missed_eigenvalue_guard` runs
   ``guard_steps`` Lanczos steps on the deflated operator ``P A P``
   (``P = I − U Uᵀ``), repairs missed eigenvalues (only those, not ``D`` new
   pairs), and bounds the probability that one above ``θ_D + tol·|θ_1|``
   went unseen; with ``max_miss_probability`` it runs until that bound is
   reached.

Method ``"block"``: the cold start runs block Lanczos from ``b`` random
vectors (``block_size``, default :data:`BLOCK_SIZE`), one batched ``matmat``
of ``b`` products per step — the fastest HVP path per vector — and the same
guard certifies it. A block of ``b ≥ 2`` vectors also sees up to ``b``
copies of a repeated eigenvalue; it needs more products than single-vector
Lanczos, fewer seconds when batched products are cheap enough
(``docs/performance.md``). Warm starts are block Davidson either way.

Method ``"power"``: :func:`~curvprobe.linalg.power.deflated_power_iteration`,
the reference baseline (no guard; stops on the eigenvalue, not the
residual).

Which end (``which``):

* ``"largest"`` (default): as above; residuals relative to ``s = |θ_1|``,
  the guard certifies no eigenvalue above ``θ_D + tol·s`` went unseen.
* ``"smallest"``: the ``D`` algebraically smallest pairs (the most negative
  curvature: is ``w*`` a minimum?); the guard certifies that no eigenvalue
  below ``θ_(D) − tol·s`` (the D-th smallest) went unseen.
* ``"both_ends"``: ``⌈D/2⌉`` largest and ``⌊D/2⌋`` smallest from one Krylov
  space (scipy's ``"BE"``); the guard checks both levels in one run.
* ``"magnitude"``: the ``D`` largest ``|λ|``; no eigenvalue with
  ``|λ| > |θ|_(D) + tol·s`` went unseen.

Except for ``"largest"``, ``s`` is the largest ``|θ|`` of any Ritz value the
solve saw — a lower bound on ``‖A‖`` that converges first — because the
wanted values may sit near zero (the bottom of a Hessian spectrum), where a
residual relative to themselves is out of reach. So what is certified at
every end is: ``‖A u_i − θ_i u_i‖ ≤ tol · s ≤ tol · ‖A‖`` for every pair,
and the guard's miss bound (a sum over the ends it checks) for the
eigenvalues beyond its levels (:func:`~curvprobe.linalg.guard.guard_levels`).
The same semantics hold for every method and warm start.

Basis storage (``basis_dtype``): ``torch.float32`` stores the Lanczos and
Davidson bases in float32 (half the memory, :func:`eigensolver_memory`),
with float64 Gram and Rayleigh–Ritz arithmetic. A float32 basis marks a
memory-bound solve: its found vectors stay float32 through the guard
(deflated by the exact projector onto the complement of their span,
:class:`~curvprobe.linalg.guard.RoundedDeflatedOperator`), its guard is
streamed (:func:`~curvprobe.linalg.guard.streamed_guard_run`, six float64
vectors whatever its steps), and only at the end are the ``D`` selected
vectors copied to float64 and certified: orthonormalised, their residuals
from ``D`` real products on them
(:func:`~curvprobe.linalg._krylov.explicit_pairs`), not from the recurrence,
so ``converged`` is true only where the true residual is within ``tol``.
The returned vectors are float64 and the certificate semantics are those of
a float64 basis.

The measured HVP counts and wall times behind these choices (warm against
cold, carried bases, guard lengths) are in ``docs/performance.md``; the role
of the eigenspace in the criteria is in ``docs/concepts.md``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from torch import Tensor

from curvprobe.core.operators import LinearOperator
from curvprobe.linalg._krylov import (
    BASIS_DTYPES,
    WHICH,
    KrylovRun,
    explicit_pairs,
    owned_buffer,
    random_unit,
    ritz_order,
    select_columns_,
)
from curvprobe.linalg.davidson import block_davidson
from curvprobe.linalg.guard import REPAIR_SPARE, GuardResult, missed_eigenvalue_guard
from curvprobe.linalg.lanczos import thick_restart_lanczos
from curvprobe.linalg.power import deflated_power_iteration
from curvprobe.linalg.result import Eigenspace, NotConverged, ToleranceBelowPrecision

METHODS = ("lanczos", "block", "power")
"""Valid values of ``top_eigenspace(method=...)``."""

BLOCK_SIZE = 4
"""Default block of ``method="block"`` (measurements in ``docs/performance.md``)."""

_DAVIDSON_REACH = 30.0  # warm start: Davidson blocks only from residuals ≤ 30 tol


def _warm_start(op: LinearOperator, init: Tensor | Eigenspace, D: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """The start block of a warm start and its image under ``op`` if known:
    a kept basis of at least ``D`` vectors that ``op`` can carry for at most
    ``D`` products (what a Rayleigh–Ritz step on the D previous vectors
    costs: a sample set that grew by more than ``D / size(basis)`` moved the
    subspace too far for the basis to pay), else the previous subspace's
    vectors (completed with random ones up to ``D``) and None."""
    if (isinstance(init, Eigenspace) and init.basis is not None and init.basis.shape[1] >= D
            and init.operator is not None and init.basis_image is not None):
        image = op.carry(init.operator, init.basis, init.basis_image, budget=D)
        if image is not None:
            return init.basis, image
    return _init_block(init, op.shape[0], D, generator, op.device), None


def _init_block(init: Tensor | Eigenspace, n: int, D: int, generator: torch.Generator,
                device: torch.device) -> Tensor:
    """Warm-start block (N, max(p, D)): the previous subspace's vectors,
    completed with random ones when it has fewer than ``D``."""
    U = init.vectors if isinstance(init, Eigenspace) else torch.as_tensor(init)
    U = U.to(device, torch.float64).reshape(n, -1)
    if not torch.isfinite(U).all() or float(U.norm()) == 0.0:
        raise ValueError("init subspace is zero or non-finite")
    extra = [random_unit(n, generator, device) for _ in range(D - U.shape[1])]
    return torch.cat([U, *(x[:, None] for x in extra)], dim=1)


def _check_args(op: LinearOperator, D: int, tol: float, method: str,
                max_miss_probability: float | None) -> None:
    if not isinstance(op, LinearOperator):
        hint = (": pass problem.hessian_operator(k) (the Hessian of L_k) or problem.ggn_operator(k)"
                if hasattr(op, "hessian_operator") else
                ": wrap a dense symmetric matrix in curvprobe.MatrixOperator(A)")
        raise TypeError(f"top_eigenspace takes a LinearOperator, got {type(op).__name__}{hint}")
    n = op.shape[0]
    if not isinstance(D, int) or not 1 <= D < n:
        raise ValueError(f"D must be an integer with 1 <= D < N = {n}, got {D!r}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if max_miss_probability is not None and not 0 < max_miss_probability < 1:
        raise ValueError(f"max_miss_probability must lie in (0, 1), got {max_miss_probability!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def _check_all(op: LinearOperator, D: int, tol: float, method: str, max_miss_probability: float | None,
               which: str, basis_dtype: torch.dtype, keep_basis: bool, block_size: int | None) -> int:
    """Every argument check of :func:`top_eigenspace`; the cold start's block size."""
    _check_args(op, D, tol, method, max_miss_probability)
    _check_tolerance(op, tol)
    return _check_variant(method, which, basis_dtype, keep_basis, block_size)


def _check_variant(method: str, which: str, basis_dtype: torch.dtype, keep_basis: bool,
                   block_size: int | None) -> int:
    """Check ``which``, ``basis_dtype`` and ``block_size`` against the method;
    return the block size of the cold start."""
    if which not in WHICH:
        raise ValueError(f"unknown which {which!r}; valid: {', '.join(WHICH)}")
    if basis_dtype not in BASIS_DTYPES:
        raise ValueError(f"basis_dtype must be torch.float64 or torch.float32, got {basis_dtype!r}")
    if method == "power" and (which != "largest" or basis_dtype != torch.float64):
        raise ValueError("method='power' solves which='largest' with a float64 basis only")
    if keep_basis and basis_dtype != torch.float64:
        raise ValueError("keep_basis=True keeps a float64 basis: use basis_dtype=torch.float64")
    if block_size is not None and (method != "block" or isinstance(block_size, bool)
                                   or int(block_size) != block_size or block_size < 1):
        raise ValueError(f"block_size must be an integer >= 1 with method='block', got {block_size!r}")
    return (BLOCK_SIZE if block_size is None else int(block_size)) if method == "block" else 1


def _start_block(n: int, b: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """The cold start: a random unit vector (N, 1), or ``b`` Gaussian columns (N, b)."""
    if b == 1:
        return random_unit(n, generator, device)[:, None]
    return torch.randn(n, b, generator=generator, dtype=torch.float64, device=generator.device).to(device)


def _run_scale(run: KrylovRun, which: str) -> float:
    """The residual scale of a run: ``max |θ|`` of its pairs (largest end),
    else the largest ``|θ|`` it saw."""
    top = float(run.values.abs().max())
    return top if which == "largest" else max(run.scale, top)


def _krylov_solve(op: LinearOperator, D: int, init: Tensor | Eigenspace | None, *, tol: float,
                  basis_size: int, budget: int, generator: torch.Generator, keep_basis: bool,
                  which: str = "largest", block: int = 1,
                  basis_dtype: torch.dtype = torch.float64) -> tuple[KrylovRun, float | None]:
    """The Ritz pairs before the guard and their residual scale (None: the
    run's ``max |θ|``, for ``which="largest"``). With a float32 basis the
    vectors stay float32, in a buffer with
    :data:`~curvprobe.linalg.guard.REPAIR_SPARE` free columns, their values
    and residuals the run's estimates and their residual factor empty: the
    guard deflates them exactly and :func:`_float64_certificate` certifies
    the result."""
    run = _ritz_pairs(op, D, init, tol=tol, basis_size=basis_size, budget=budget,
                      generator=generator, keep_basis=keep_basis, which=which, block=block,
                      basis_dtype=basis_dtype)
    scale = None if which == "largest" else _run_scale(run, which)
    if basis_dtype == torch.float64:
        return run, scale
    # room for a repair's pairs: no copy to merge them
    vectors = owned_buffer(run.vectors, REPAIR_SPARE, basis_dtype)
    return dataclasses.replace(run, vectors=vectors, F=run.F.new_zeros(vectors.shape[0], 0),
                               S=run.S.new_zeros(vectors.shape[1], 0), spare=REPAIR_SPARE), scale


def _guarded_solve(op: LinearOperator, D: int, init: Tensor | Eigenspace | None, *, tol: float,
                   basis_size: int, budget: int, generator: torch.Generator, keep_basis: bool, which: str,
                   block: int, basis_dtype: torch.dtype, guard: tuple[int, int, float | None]
                   ) -> tuple[tuple[Tensor | None, Tensor | None], GuardResult, float | None]:
    """The solve (:func:`_krylov_solve`) and its missed-eigenvalue guard
    (``guard``: steps, rounds, miss bound): the run's kept basis and image,
    the guarded pairs — a memory-bound solve's certified in float64 once
    the run is dropped (:func:`_float64_certificate`) — and the residual scale."""
    start = op.num_matvecs
    run, scale = _krylov_solve(op, D, init, tol=tol, basis_size=basis_size, budget=budget,
                               generator=generator, keep_basis=keep_basis, which=which, block=block,
                               basis_dtype=basis_dtype)
    steps, rounds, miss_bound = guard
    checked = missed_eigenvalue_guard(op, run, D, tol=tol, steps=steps, max_rounds=rounds,
                                      max_miss_probability=miss_bound, basis_size=basis_size,
                                      max_matvecs=budget - (op.num_matvecs - start), generator=generator,
                                      which=which, scale=scale, basis_dtype=basis_dtype)
    kept = (run.basis, run.image)
    del run  # a memory-bound solve's float32 vectors are now the guard's alone
    if basis_dtype != torch.float64:
        checked = _float64_certificate(op, checked, D, which, scale)
    return kept, checked, scale


def _float64_certificate(op: LinearOperator, checked: GuardResult, D: int, which: str,
                         scale: float | None) -> GuardResult:
    """The ``D`` pairs of a memory-bound solve's guarded float32 vectors that
    ``which`` selects, certified in float64: selected in place
    (:func:`~curvprobe.linalg._krylov.select_columns_`), copied to float64,
    the float32 buffer released (``checked`` gives up its vectors), then
    orthonormalised, with Rayleigh quotients and residuals from ``D`` real
    products (:func:`~curvprobe.linalg._krylov.explicit_pairs`), in
    decreasing order. Peak: the float32 buffer and the (N, D) float64
    copy, without a product; then the copy and one product."""
    order = _chosen(checked.values, D, which)
    vectors, checked.vectors = checked.vectors, checked.vectors.new_empty(0, 0)
    vectors = select_columns_(vectors, order) if checked.spare is not None else vectors[:, order]
    X = vectors.to(torch.float64)
    del vectors  # the float32 buffer goes before the products
    pairs = explicit_pairs(op, X, "largest", math.nan if scale is None else scale)
    return dataclasses.replace(checked, values=pairs.values, vectors=pairs.vectors,
                               residuals=pairs.residuals, spare=None)


def _ritz_pairs(op: LinearOperator, D: int, init: Tensor | Eigenspace | None, *, tol: float,
                basis_size: int, budget: int, generator: torch.Generator, keep_basis: bool,
                which: str, block: int, basis_dtype: torch.dtype) -> KrylovRun:
    """Lanczos from a random vector or block (cold), or Davidson from
    ``init`` (warm), continued by Lanczos from the sum of its Ritz vectors
    when a residual is still above ``tol`` and budget is left."""
    start = op.num_matvecs
    if init is None:
        return thick_restart_lanczos(op, D, _start_block(op.shape[0], block, generator, op.device),
                                     tol=tol, basis_size=basis_size, max_matvecs=budget,
                                     generator=generator, keep_basis=keep_basis, which=which,
                                     basis_dtype=basis_dtype)
    U0, image = _warm_start(op, init, D, generator)
    run = block_davidson(op, D, U0, image=image, max_matvecs=budget, reach=_DAVIDSON_REACH, tol=tol,
                         basis_size=basis_size, generator=generator, keep_basis=keep_basis,
                         which=which, basis_dtype=basis_dtype)
    spent = op.num_matvecs - start
    if bool((run.residuals > tol * _run_scale(run, which)).any()) and spent < budget:
        # the subspace moved far: Lanczos from the sum of its Ritz vectors
        run = thick_restart_lanczos(op, D, run.vectors.sum(dim=1, keepdim=True), tol=tol,
                                    basis_size=basis_size, max_matvecs=budget - spent,
                                    generator=generator, keep_basis=keep_basis, which=which,
                                    basis_dtype=basis_dtype)
    return run


def _chosen(values: Tensor, D: int, which: str) -> Tensor:
    """Indices (D,) of the ``D`` values ``which`` selects, in decreasing order of value."""
    if which == "largest":
        return values.argsort(descending=True)[:D]
    desc = values.argsort(descending=True)
    chosen = desc[ritz_order(values[desc], which)[:D]]
    return chosen[values[chosen].argsort(descending=True)]


def _certified(op: LinearOperator, kept: tuple[Tensor | None, Tensor | None], checked: GuardResult,
               D: int, tol: float, start: int, start_cost: float, which: str = "largest",
               scale: float | None = None, method: str = "lanczos",
               miss_bound: float | None = None) -> Eigenspace:
    """The ``D`` pairs of the guarded run that ``which`` selects, sorted
    decreasing, with relative residuals and the work spent since ``start`` /
    ``start_cost``; ``kept`` is the run's basis and image (``keep_basis``)."""
    values, vectors, residuals = checked.values, checked.vectors, checked.residuals
    # pairs merged by a repair lie outside the run's basis: it cannot be kept
    basis, image = (None, None) if checked.repaired else kept
    order = _chosen(values, D, which)
    if which == "largest":
        scale = float(values[order].abs().max())
    assert scale is not None
    rel = residuals[order] / scale if scale > 0 else residuals[order]
    converged = (rel <= tol) & checked.certified
    if vectors.shape[1] != D or not torch.equal(order, torch.arange(D, device=order.device)):
        vectors = vectors[:, order]  # a copy only when pairs are dropped or reordered
    return Eigenspace(values[order].clone(), vectors.contiguous(), rel,
                      op.num_matvecs - start, converged, tol, method, checked.guard_value,
                      checked.miss_probability, op.cost - start_cost, basis, image,
                      op if basis is not None else None, which, scale, checked.guard_low,
                      math.nan if miss_bound is None else float(miss_bound))


def top_eigenspace(op: LinearOperator, D: int, *, tol: float = 1e-3, method: str = "lanczos",
                   seed: int = 0, init: Tensor | Eigenspace | None = None,
                   max_matvecs: int | None = None, basis_size: int | None = None,
                   guard_steps: int = 10, max_guard_rounds: int = 4,
                   max_miss_probability: float | None = None, keep_basis: bool = False,
                   power_iters: int = 100, power_tol: float = 1e-4, which: str = "largest",
                   basis_dtype: torch.dtype = torch.float64, block_size: int | None = None) -> Eigenspace:
    """``D`` certified eigenpairs of the symmetric ``op``: the largest, the
    smallest, both ends or the largest in magnitude.

    Parameters
    ----------
    op : LinearOperator
        E.g. ``problem.hessian_operator(k)``; only ``matvec`` is used.
    D : int
        Number of eigenpairs, ``1 ≤ D < N``.
    tol : float
        Relative residual target ``‖A u − θ u‖ ≤ tol · s``
        (:attr:`~curvprobe.linalg.result.Eigenspace.scale`; ``|θ_1|`` by default).
    method : {"lanczos", "block", "power"}
        ``"block"``: a cold start by block Lanczos on ``block_size`` vectors.
    seed : int
        Seeds the start and guard vectors (a generator on the operator's device).
    init : Tensor (N, p) or Eigenspace, optional
        Warm start from a previous subspace (the next k, the next checkpoint).
        An Eigenspace solved with ``keep_basis=True`` whose operator ``op``
        can :meth:`~curvprobe.core.operators.LinearOperator.carry` from (the
        Hessian on fewer leading samples, same point) starts from its whole
        basis, with ``A Q`` derived from HVPs on the new samples only.
    max_matvecs : int, optional
        Budget of operator products (default ``max(40 D, 400)``); a run that
        hits it returns with ``converged`` False where not certified.
    basis_size : int, optional
        Lanczos basis bound (default ``max(3 D, D + 40)``): memory is
        ``N × (basis_size + 1)`` in ``basis_dtype`` (:func:`eigensolver_memory`).
    guard_steps : int
        Lanczos steps of the missed-eigenvalue guard (0 disables it; the
        result then cannot be certified and ``converged`` is all False).
    max_guard_rounds : int
        Missed-eigenvalue repairs before giving up the certificate.
    max_miss_probability : float, optional
        The miss bound ``β`` to certify at (:attr:`~curvprobe.linalg.result.Eigenspace.certified`):
        the guard runs until its miss probability falls to ``β``, within
        ``guard_steps`` (raise both together), else not converged. Default:
        ``guard_steps`` decide ``converged``, the bound is reported, nothing certified.
    keep_basis : bool
        Return the final basis and its image (memory 2 × N × basis_size
        float64) for a carried warm start at the next k.
    power_iters, power_tol :
        Iteration cap and eigenvalue-change tolerance of ``method="power"``.
    which : {"largest", "smallest", "both_ends", "magnitude"}
        Which pairs (module docstring: what each certifies).
    basis_dtype : torch.float64 or torch.float32
        Krylov basis storage; float32 halves it and adds ``D`` products.
    block_size : int, optional
        Block of ``method="block"`` (default :data:`BLOCK_SIZE`).

    Returns
    -------
    Eigenspace
    """
    block = _check_all(op, D, tol, method, max_miss_probability, which, basis_dtype, keep_basis, block_size)
    generator = torch.Generator(device=op.device).manual_seed(int(seed))
    budget = int(max_matvecs) if max_matvecs is not None else max(40 * D, 400)
    start, start_cost = op.num_matvecs, op.cost
    if method == "power":
        return deflated_power_iteration(op, D, tol=tol, generator=generator, budget=budget,
                                        iters=power_iters, change_tol=power_tol, start=start)
    m = max(D + 2, int(basis_size) if basis_size is not None else max(3 * D, D + 40))
    kept, checked, scale = _guarded_solve(op, D, init, tol=tol, basis_size=m, budget=budget,
                                          generator=generator, keep_basis=keep_basis, which=which,
                                          block=block, basis_dtype=basis_dtype,
                                          guard=(guard_steps, max_guard_rounds, max_miss_probability))
    result = _certified(op, kept, checked, D, tol, start, start_cost, which, scale, method,
                        max_miss_probability)
    _warn_if_uncertified(result, spent=op.num_matvecs - start, budget=budget)
    return result


def precision_floor(op: LinearOperator) -> float:
    """Smallest relative residual the operator's products resolve: ``10 · eps`` of the dtype its
    products are computed in (a Hessian operator's problem dtype; float64 otherwise)."""
    dtype = getattr(getattr(op, "problem", None), "dtype", torch.float64)
    return 10 * torch.finfo(dtype).eps


def _check_tolerance(op: LinearOperator, tol: float) -> None:
    floor = precision_floor(op)
    if tol < floor:
        warnings.warn(f"tol = {tol:g} is below what this operator's products resolve (≈ {floor:.0e}, "
                      "10 eps of their dtype): residuals under it are round-off, so the certificate "
                      f"means ≈ {floor:.0e}; use a float64 problem for a tighter one",
                      ToleranceBelowPrecision, stacklevel=4)


def _warn_if_uncertified(result: Eigenspace, *, spent: int, budget: int) -> None:
    if result.all_converged:
        return
    missing = int((~result.converged).sum())
    why = (f"the budget of {budget} products ran out (max_matvecs)" if spent >= budget else
           "the guard did not certify them (see miss_probability)")
    warnings.warn(f"{missing} of {result.D} eigenpairs are not converged and certified: {why}; "
                  "Eigenspace.converged says which", NotConverged, stacklevel=3)
