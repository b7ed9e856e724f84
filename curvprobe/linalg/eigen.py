"""Top-D eigenspace of a symmetric operator, with certificates.

:func:`top_eigenspace` returns the ``D`` algebraically largest eigenpairs
``(θ_i, u_i)`` of an operator ``A`` (N × N) — for curvprobe, the Hessian
``H^(k)(w*)`` seen through exact HVPs — as an :class:`Eigenspace` carrying its
own certificate: the relative residuals

    r_i = ‖A u_i − θ_i u_i‖ / |θ_1|,

the number of operator products used, and per-pair ``converged`` flags
(``r_i ≤ tol`` *and* the missed-eigenvalue guard passed).

Method ``"lanczos"`` (default): Lanczos with full reorthogonalisation (two
classical Gram–Schmidt passes) and thick restart (Wu & Simon): the basis holds
at most ``basis_size`` vectors; at a restart the best Ritz vectors are kept and
the projected matrix becomes an arrowhead. Ritz residuals come for free from
the Lanczos relation ``A Q = Q T + f eᵀ``: ``‖A u − θ u‖ = ‖f‖ |s_m|``.

Small residuals certify that each ``θ_i`` is near *some* eigenvalue, not that
no larger one was skipped (a single Krylov sequence can miss an eigenvalue of a
dense bulk, and never sees the second copy of a repeated one). The guard runs
``guard_steps`` Lanczos steps from a fresh random vector on the deflated
operator ``P A P`` (``P = I − U Uᵀ``); by Cauchy interlacing its top Ritz value
is a lower bound on the largest eigenvalue not yet found, so if it exceeds
``θ_D`` an eigenvalue was missed. The missed part is then solved on the
deflated operator, merged, and the guard repeats. The guard is probabilistic,
like every Krylov method's: it fails only when the random start has an
unusually small component on the missed eigenvector (measured: 5e-4 and 1.3e-3,
against a typical 1/√N ≈ 0.08, defeated 8 steps on a gap of 1/8 of the
spread). On 300 random degenerate spectra 8 steps missed a copy 3 times, 10
steps (the default) never; more steps shrink the chance geometrically. A
missed eigenvalue inside a dense bulk closer to θ_D than the tolerance
resolves is beyond any short guard (2 of 300 uniform bulks at tol 1e-6).

How small "unusually small" is, each result states: every eigenpair
``(λ, v)`` of the deflated operator has ``(vᵀx_0)² ≤ 1/K_j(λ)``, with
``K_j`` the reciprocal Christoffel function of the guard's ``j``-step Krylov
space (:func:`christoffel_kernel`), so an eigenvalue above ``θ_D + tol·|θ_1|``
hides from a passing guard only if the uniformly random start's component
is that small — probability :func:`miss_probability`, reported as
:attr:`Eigenspace.miss_probability`. The bound holds for any spectrum and is
honest rather than small: 10 steps give 0.28–0.47 on tiny-gpt (D = 20, the
deflated operator's top 1.5 % below θ_D), 1e-2 takes 20–25 steps and 1e-3 30.
``max_miss_probability`` runs the guard to a chosen level. The guard runs
all its steps unless a miss shows: its own top Ritz pair converging says
nothing about what its start does not see (stopping there, a tol-1e-2 solve
on tiny-gpt, D = 16, skipped the eigenvalue 0.831 above the level 0.800 and
reported a bound of 1; run out, the guard finds it).

Warm start (``init``, a previous subspace — the next k, the next
checkpoint): block Davidson from that subspace. Its first block is one
Rayleigh–Ritz step (``p`` products in one batched ``matmat``, the fastest HVP
path); if the subspace barely moved, that certifies and the run ends there
(plus the guard). Otherwise blocks of the worst residuals follow. Measured on
tiny-gpt (D = 16, tol 1e-3): k = 511 → 512 takes 16 products against 50 cold
Lanczos steps; k = 480 → 512 takes 53 against 50, in 0.75× the wall time —
a 6 % change of the sample set rotates the subspace by ~1e-2, ten times the
tolerance, and no warm start skips the polynomial that closes that gap
(Lanczos from the sum of the previous vectors took 47 steps there, but 38 at
k = 511 → 512). When a Rayleigh–Ritz residual exceeds 30 tol (k = 7 → 11:
0.1–0.3) Davidson blocks would cost more than Lanczos (166 products against 90
cold), so the run continues by Lanczos from the sum of the Ritz vectors:
warm then costs the cold count plus the one batched block.

Carried basis: with ``keep_basis=True`` the result keeps the solver's final
basis ``Q`` (all of it, not just the D Ritz vectors) and ``A Q``. Warm-started
from such a result, an operator that can derive its image from the previous
one (:meth:`~curvprobe.core.operators.LinearOperator.carry`: the Hessian over
``k > k_0`` leading samples at the same point, ``H^(k) Q = (k_0 H^(k_0) Q +
(k − k_0) H_new Q) / k``) starts Davidson from all of ``Q`` with HVPs on the
``k − k_0`` new samples only — ``(k − k_0)/k`` of a product per vector,
counted in :attr:`Eigenspace.cost` — provided that costs at most ``D``
products (else the sample set grew so much that the start is the D previous
vectors, as above). Measured on tiny-gpt (D = 16, tol 1e-3):
k = 1023 → 1024 costs 14 products (10 of them the guard) against 59 cold;
k = 960 → 1024 costs 39 products plus 2.2 carried against 59 (1.8× less
wall time).

Method ``"power"``: deflated power iteration as in PyHessian (fixed maximum
iterations, stop when the eigenvalue estimate changes by less than 1e-4
relative). Kept only as the reference baseline for benchmarks: it stops on the
eigenvalue, not the residual, so its ``converged`` flags are often False.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from scipy.special import betainc
from torch import Tensor

from curvprobe.core.operators import DeflatedOperator, LinearOperator

METHODS = ("lanczos", "power")
_DAVIDSON_BLOCK = 8  # residuals added per warm-start block (batched HVPs)
_DAVIDSON_REACH = 30.0  # warm start: Davidson blocks only from residuals ≤ 30 tol
# the guard stops on its own top Ritz pair only at this relative residual: an
# invariant subspace of the start, past which Lanczos would go on from random
# vectors outside the deflated range
_GUARD_TOL = 1e-10
_DGKS = 2**-0.5  # re-orthogonalise when a projection removed more than 1 − 1/√2 of a norm


@dataclass(frozen=True)
class Eigenspace:
    """Top-D eigenpairs with their certificate.

    Attributes
    ----------
    values : Tensor (D,) float64
        Eigenvalue estimates ``θ_1 ≥ … ≥ θ_D`` (algebraically largest).
    vectors : Tensor (N, D) float64
        Orthonormal eigenvector estimates ``U_D``.
    residuals : Tensor (D,) float64
        ``‖A u_i − θ_i u_i‖ / |θ_1|``.
    num_matvecs : int
        Operator products (vectors) used, guard included.
    converged : Tensor (D,) bool
        ``residuals ≤ tol`` and the missed-eigenvalue guard passed.
    tol : float
    method : str
    guard_value : float
        Top Ritz value of the final deflated guard run (NaN if no guard ran);
        the result is certified only if it is ≤ ``θ_D + tol·|θ_1|``.
    miss_probability : float
        Bound on the probability, over the guard's random start, that an
        eigenvalue above ``θ_D + tol·|θ_1|`` went unseen (NaN if no guard
        passed): :func:`miss_probability` of the guard run's
        :func:`christoffel_kernel` at that level. A property of the guard's
        Krylov space, not a heuristic; 10 steps give 0.28–0.47 on tiny-gpt (D = 20).
    cost : float
        Work in units of one operator product: ``num_matvecs`` plus carried
        images (a basis carried from ``k_0`` to ``k`` samples costs
        ``(k − k_0)/k`` of a product per vector). NaN if not recorded.
    basis, basis_image : Tensor (N, m) or None
        With ``keep_basis=True``: the solver's final orthonormal basis ``Q``
        (the top-D Ritz vectors span part of it) and ``A Q``, so that a warm
        start on an operator that :meth:`~curvprobe.core.operators.LinearOperator.carry`
        can derive from ``operator`` (the next k) starts from all of ``Q``.
    operator : LinearOperator or None
        The operator solved, kept with the basis.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    num_matvecs: int
    converged: Tensor
    tol: float
    method: str
    guard_value: float = math.nan
    miss_probability: float = math.nan
    cost: float = math.nan
    basis: Tensor | None = field(default=None, repr=False, compare=False)
    basis_image: Tensor | None = field(default=None, repr=False, compare=False)
    operator: LinearOperator | None = field(default=None, repr=False, compare=False)

    @property
    def D(self) -> int:
        """Number of eigenpairs."""
        return self.values.numel()

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def ritz_matrix(self) -> Tensor:
        """``T = U_Dᵀ A U_D`` (D, D): diagonal ``diag(θ)`` for Rayleigh–Ritz
        vectors (off-diagonal error at round-off level)."""
        return torch.diag(self.values)


@dataclass
class _Krylov:
    """One solver run: Ritz pairs plus the residual factor
    ``A U − U Θ = F Sᵀ`` with ``F`` (N, b) and ``S`` (nev, b), the final
    projected matrix ``T = Qᵀ A Q``; with ``keep_basis``, the final basis
    ``Q`` and its image ``A Q``."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    F: Tensor
    S: Tensor
    T: Tensor
    basis: Tensor | None = None
    image: Tensor | None = None


def _orthonormalize_against(x: Tensor, Q: Tensor | None) -> Tensor:
    """Two Gram–Schmidt passes of the columns of ``x`` against ``Q``."""
    if Q is not None and Q.shape[1]:
        for _ in range(2):
            x = x - Q @ (Q.T @ x)
    return x


def _random_unit(n: int, generator: torch.Generator, device: torch.device,
                 against: Tensor | None = None) -> Tensor:
    x = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
    x = _orthonormalize_against(x[:, None], against)[:, 0]
    return x / x.norm()


def _next_block(F: Tensor, Q: Tensor, generator: torch.Generator, floor: float) -> Tensor:
    """Orthonormal basis of the residual block ``F`` (N, b), which is already
    orthogonal to ``Q``; a column with norm ≤ ``floor`` (an invariant
    subspace was found) is replaced by a fresh random direction orthogonal
    to ``Q`` and the columns before it."""
    X = F.clone()
    for j in range(X.shape[1]):
        x = _orthonormalize_against(X[:, j : j + 1], X[:, :j])[:, 0]
        norm = float(x.norm())
        X[:, j] = x / norm if norm > floor else _random_unit(
            F.shape[0], generator, F.device, torch.cat([Q, X[:, :j]], dim=1))
    return X


def _project_out(W: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """``W − Q C`` orthogonal to the orthonormal ``Q`` and the coefficients
    ``C = Qᵀ W`` (size(Q), b): classical Gram–Schmidt with the DGKS test — a
    second pass only when the first removed more than ``1 − 1/√2`` of a
    column's norm (the reads of ``Q`` dominate a Lanczos step's own cost)."""
    before = W.norm(dim=0)
    C = Q.T @ W
    W = torch.addmm(W, Q, C, alpha=-1)
    if bool((W.norm(dim=0) < _DGKS * before).any()):
        C2 = Q.T @ W
        W.addmm_(Q, C2, alpha=-1)
        C += C2
    return W, C


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


def _guard_until(level: float, dim: int, target: float | None) -> Callable[[Tensor, float], bool]:
    """Stop rule of a guard run: its top Ritz value exceeds ``level`` (an
    eigenvalue was missed), or the miss bound at ``level`` fell to ``target``
    (if given). Not the convergence of its own top Ritz pair: that pair
    converges to the top of what the start vector sees, which says nothing
    about what it does not."""

    def until(T: Tensor, top: float) -> bool:
        return (top > level
                or target is not None and miss_probability(christoffel_kernel(T, level), dim) <= target)

    return until


def _trlan(op: LinearOperator, nev: int, X0: Tensor, *, tol: float, basis_size: int,
           max_matvecs: int, generator: torch.Generator, scale: float | None = None,
           keep_basis: bool = False,
           until: Callable[[Tensor, float], bool] | None = None) -> _Krylov:
    """Thick-restart block Lanczos for the ``nev`` largest eigenpairs of ``op``.

    ``X0`` (N, b) starts the Krylov space; its width b is the block size (1:
    the classic single-vector method; b > 1 uses batched products). The
    projected matrix ``T = Qᵀ A Q`` is filled from the Gram–Schmidt
    coefficients (both passes), so kept Ritz vectors after a restart need no
    special structure: ``A Q = Q T + F Eᵀ`` holds with ``F`` the residual of
    the last block, and the residual of a Ritz pair ``(θ, Q s)`` is
    ``‖F s_last‖``. Stops when every wanted pair has
    ``‖A u − θ u‖ ≤ tol · scale`` (``scale`` defaults to ``max |θ_i|`` over
    the wanted ones), when ``until(T, θ_1)`` is true, or after ``max_matvecs``
    products. With ``keep_basis`` the run also returns ``Q`` and
    ``A Q = Q T + F E_lastᵀ``.
    """
    n = op.shape[0]
    b = X0.shape[1]
    m = min(max(basis_size, nev + 2 * b), n)
    # the basis, preallocated with one Krylov vector per row: the projections
    # Qᵀ W and Q C then read contiguous memory (measured 3.5× faster than
    # columns of an (N, m) buffer for N ≈ 1e5)
    rows = torch.empty(m + b, n, dtype=torch.float64, device=op.device)
    size = 0
    X = _next_block(X0, rows[:0].T, generator, 0.0)
    T = torch.zeros(0, 0, dtype=torch.float64, device=op.device)
    used = 0
    while True:
        b = min(X.shape[1], n - size)
        X = X[:, :b]
        W = op.matmat(X)
        used += b
        rows[size : size + b] = X.T
        size += b
        Q = rows[:size].T
        W, H = _project_out(W, Q)
        T_new = torch.zeros(size, size, dtype=torch.float64, device=op.device)
        T_new[: size - b, : size - b] = T
        T_new[:, size - b :] = H
        T_new[size - b :, :] = H.T
        T = 0.5 * (T_new + T_new.T)
        theta, S = torch.linalg.eigh(T)
        theta, S = theta.flip(0), S.flip(1)
        wanted = min(nev, size)
        top_scale = scale if scale is not None else float(theta[:wanted].abs().max())
        S_last = S[size - b :, :]
        res = torch.einsum("ij,ik,kj->j", S_last, W.T @ W, S_last).clamp_min(0).sqrt()  # ‖W s_last‖
        done = size >= nev and bool((res[:nev] <= tol * top_scale).all())
        if until is not None:
            done = done or until(T, float(theta[0]))
        if done or used >= max_matvecs or size >= n:
            basis = image = None
            if keep_basis:
                basis, image = Q.clone(), Q @ T
                image[:, size - b :] += W
            return _Krylov(theta[:wanted], Q @ S[:, :wanted], res[:wanted], W,
                           S_last[:, :wanted].T.contiguous(), T, basis, image)
        if size + b > m:
            # thick restart: keep the best p Ritz vectors; A Z = Z Θ + W S_lastᵀ
            p = max(nev, min(m - b, nev + (m - nev) // 2))
            rows[:p] = S[:, :p].T @ rows[:size]
            size = p
            Q = rows[:size].T
            T = torch.diag(theta[:p])
        X = _next_block(W, Q, generator, 1e-14 * max(top_scale, 1e-300))


def _davidson(op: LinearOperator, nev: int, U0: Tensor, *, tol: float, basis_size: int,
              max_matvecs: int, generator: torch.Generator, reach: float = math.inf,
              image: Tensor | None = None, keep_basis: bool = False) -> _Krylov:
    """Block Davidson (no preconditioner) for the ``nev`` largest eigenpairs,
    started from the subspace ``U0`` (N, p): the warm start.

    The first block is a Rayleigh–Ritz step in ``span(U0)``: ``p`` products
    in one ``matmat``, or none when ``image = A U0`` is given (``U0`` then
    orthonormal: a carried basis). Each further block adds the residuals of
    the pairs not yet within ``tol · max |θ|`` (the ``_DAVIDSON_BLOCK``
    worst), so a subspace that barely moved costs the first block and one
    that moved a few batched blocks. Keeps ``A Q`` next to the basis ``Q``
    (memory 2 × N × basis_size), so residuals are explicit: ``A X − X Θ = R``
    is returned as ``F = R``, ``S = I``. At the basis bound it restarts from
    the best ``nev + (basis_size − nev) // 2`` Ritz vectors. If a residual
    after the first block exceeds ``reach · tol · max |θ|`` the Rayleigh–Ritz
    result is returned as it is (the subspace moved too far for Davidson
    blocks to beat Lanczos).
    """
    n = op.shape[0]
    m = min(max(basis_size, 2 * nev), n)
    if image is None:
        Q = AQ = torch.empty(n, 0, dtype=torch.float64, device=op.device)
        Z = _next_block(U0 / U0.norm(dim=0).clamp_min(1e-300), U0[:, :0], generator, 1e-10)
    else:
        Q, AQ, Z = U0, image, None
    used, first = 0, True
    while True:
        if Z is not None:
            AZ = op.matmat(Z)
            used += Z.shape[1]
            Q, AQ = torch.cat([Q, Z], dim=1), torch.cat([AQ, AZ], dim=1)
        T = Q.T @ AQ
        theta, S = torch.linalg.eigh(0.5 * (T + T.T))
        theta, S = theta.flip(0), S.flip(1)
        wanted = min(nev, Q.shape[1])
        X, AX = Q @ S[:, :wanted], AQ @ S[:, :wanted]
        R = AX - X * theta[:wanted]
        res = R.norm(dim=0)
        top = float(theta[:wanted].abs().max())
        open_ = res > tol * top
        far = first and bool((res > reach * tol * top).any())
        first = False
        if far or not bool(open_.any()) and wanted == nev or used >= max_matvecs or Q.shape[1] >= n:
            return _Krylov(theta[:wanted], X, res, R,
                           torch.eye(wanted, dtype=torch.float64, device=op.device), T,
                           Q if keep_basis else None, AQ if keep_basis else None)
        idx = torch.nonzero(open_)[:, 0]
        room = min(_DAVIDSON_BLOCK, max_matvecs - used, n - Q.shape[1])
        idx = idx[res[idx].argsort(descending=True)[: max(1, room)]]
        if Q.shape[1] + idx.numel() > m:  # restart from the best Ritz vectors
            keep = max(wanted, min(m - idx.numel(), nev + (m - nev) // 2))
            Q, AQ = Q @ S[:, :keep], AQ @ S[:, :keep]
        Z = _next_block(_orthonormalize_against(R[:, idx], Q), Q, generator,
                        1e-14 * max(top, 1e-300))


def _warm_start(op: LinearOperator, init: Tensor | Eigenspace, D: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """The start block of a warm start and its image under ``op`` if known:
    a kept basis of at least ``D`` vectors that ``op`` can carry for at most
    ``D`` products (what a Rayleigh–Ritz step on the D previous vectors
    costs: a sample set that grew by more than ``D / size(basis)`` moved the
    subspace too far for the basis to pay), else the previous subspace's
    vectors (completed with random ones up to ``D``) and None."""
    if isinstance(init, Eigenspace) and init.basis is not None and init.basis.shape[1] >= D:
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
    extra = [_random_unit(n, generator, device) for _ in range(D - U.shape[1])]
    return torch.cat([U, *(x[:, None] for x in extra)], dim=1)


def _check_args(op: LinearOperator, D: int, tol: float) -> None:
    n = op.shape[0]
    if not isinstance(D, int) or D < 1 or D >= n:
        raise ValueError(f"D must be an integer with 1 <= D < N = {n}, got {D!r}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")


def top_eigenspace(op: LinearOperator, D: int, *, tol: float = 1e-3, method: str = "lanczos",
                   seed: int = 0, init: Tensor | Eigenspace | None = None,
                   max_matvecs: int | None = None, basis_size: int | None = None,
                   guard_steps: int = 10, max_guard_rounds: int = 4,
                   max_miss_probability: float | None = None, keep_basis: bool = False,
                   power_iters: int = 100, power_tol: float = 1e-4) -> Eigenspace:
    """The ``D`` algebraically largest eigenpairs of the symmetric ``op``.

    Parameters
    ----------
    op : LinearOperator
        E.g. ``problem.hessian_operator(k)``; only ``matvec`` is used.
    D : int
        Number of eigenpairs, ``1 ≤ D < N``.
    tol : float
        Relative residual target ``‖A u − θ u‖ ≤ tol · |θ_1|``.
    method : {"lanczos", "power"}
    seed : int
        Seeds the start and guard vectors (a CPU ``torch.Generator``).
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
        ``N × (basis_size + 1)`` float64.
    guard_steps : int
        Lanczos steps of the missed-eigenvalue guard (0 disables it; the
        result then cannot be certified and ``converged`` is all False).
    max_guard_rounds : int
        Missed-eigenvalue repairs before giving up the certificate.
    max_miss_probability : float, optional
        Certify only if :attr:`Eigenspace.miss_probability` falls to this
        level; the guard then stops as soon as it does, within
        ``guard_steps`` (raise both together: tiny-gpt needs 20–25 steps
        for 1e-2 and 30 for 1e-3 at D = 20). Default: the guard's fixed
        ``guard_steps`` certify and the bound is only reported.
    keep_basis : bool
        Return the final basis and its image (memory 2 × N × basis_size
        float64) for a carried warm start at the next k.
    power_iters, power_tol :
        Iteration cap and eigenvalue-change tolerance of ``method="power"``.

    Returns
    -------
    Eigenspace
    """
    _check_args(op, D, tol)
    if max_miss_probability is not None and not 0 < max_miss_probability < 1:
        raise ValueError(f"max_miss_probability must lie in (0, 1), got {max_miss_probability!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    generator = torch.Generator().manual_seed(int(seed))
    n = op.shape[0]
    budget = int(max_matvecs) if max_matvecs is not None else max(40 * D, 400)
    start, start_cost = op.num_matvecs, op.cost
    if method == "power":
        return _power_iteration(op, D, tol=tol, generator=generator, budget=budget,
                                iters=power_iters, change_tol=power_tol, start=start)
    m = max(D + 2, int(basis_size) if basis_size is not None else max(3 * D, D + 40))
    solve = {"tol": tol, "basis_size": m, "generator": generator, "keep_basis": keep_basis}
    if init is None:
        run = _trlan(op, D, _random_unit(n, generator, op.device)[:, None], max_matvecs=budget,
                     **solve)
    else:
        U0, image = _warm_start(op, init, D, generator)
        run = _davidson(op, D, U0, image=image, max_matvecs=budget, reach=_DAVIDSON_REACH,
                        **solve)
        spent = op.num_matvecs - start
        if bool((run.residuals > tol * float(run.values.abs().max())).any()) and spent < budget:
            # the subspace moved far: Lanczos from the sum of its Ritz vectors
            run = _trlan(op, D, run.vectors.sum(dim=1, keepdim=True), max_matvecs=budget - spent,
                         **solve)
    values, vectors, residuals = run.values, run.vectors, run.residuals
    scale = float(values.abs().max())
    F, S = run.F, run.S
    guard_value, miss, certified = math.nan, math.nan, False
    for _ in range(max_guard_rounds + 1):
        if guard_steps <= 0 or vectors.shape[1] + 1 >= n:
            certified = guard_steps > 0
            break
        spent = op.num_matvecs - start
        if spent >= budget:
            break
        level = float(values.sort(descending=True).values[D - 1]) + tol * scale  # θ_D + tol·|θ_1|
        deflated = DeflatedOperator(op, vectors)
        dim = n - vectors.shape[1]
        x0 = _random_unit(n, generator, op.device, vectors)
        guard = _trlan(deflated, 1, x0[:, None], tol=_GUARD_TOL, basis_size=guard_steps,
                       max_matvecs=min(guard_steps, budget - spent), generator=generator,
                       scale=scale, until=_guard_until(level, dim, max_miss_probability))
        guard_value = float(guard.values[0])
        if guard_value <= level:
            miss = miss_probability(christoffel_kernel(guard.T, level), dim)
            certified = max_miss_probability is None or miss <= max_miss_probability
            break
        # an eigenvalue above θ_D was missed: solve for it in the complement
        spent = op.num_matvecs - start
        extra = _trlan(deflated, min(D, n - vectors.shape[1] - 1), guard.vectors[:, :1], tol=tol,
                       basis_size=m, max_matvecs=max(budget - spent, 1), generator=generator,
                       scale=scale)
        # A x = PAPx + V Vᵀ A x and Vᵀ A x = S Fᵀ x for x ⟂ V: exact residuals
        leak = (S @ (F.T @ extra.vectors)).norm(dim=0)
        values = torch.cat([values, extra.values])
        vectors = torch.cat([vectors, extra.vectors], dim=1)
        residuals = torch.cat([residuals, torch.sqrt(extra.residuals**2 + leak**2)])
        F = torch.cat([F, extra.F], dim=1)
        S = torch.block_diag(S, extra.S)
        run.basis = run.image = None  # the merged pairs lie outside the run's basis
    order = values.argsort(descending=True)[:D]
    scale = float(values[order].abs().max())
    rel = residuals[order] / scale if scale > 0 else residuals[order]
    converged = (rel <= tol) & certified
    return Eigenspace(values[order].clone(), vectors[:, order].contiguous(), rel, op.num_matvecs - start,
                      converged, tol, "lanczos", guard_value, miss, op.cost - start_cost, run.basis,
                      run.image, op if run.basis is not None else None)


def _power_iteration(op: LinearOperator, D: int, *, tol: float, generator: torch.Generator,
                     budget: int, iters: int, change_tol: float, start: int) -> Eigenspace:
    """PyHessian's deflated power iteration (reference baseline)."""
    n = op.shape[0]
    values, vectors, residuals = [], [], []
    for _ in range(D):
        found = torch.stack(vectors, dim=1) if vectors else None
        v = _random_unit(n, generator, op.device, found)
        theta, prev, res = 0.0, None, math.inf
        for _ in range(iters):
            if op.num_matvecs - start >= budget:
                break
            v = _orthonormalize_against(v[:, None], found)[:, 0]
            v = v / v.norm()
            Hv = op.matvec(v)
            theta = float(v @ Hv)
            res = float((Hv - theta * v).norm())
            if prev is not None and abs(theta - prev) / (abs(prev) + 1e-6) < change_tol:
                break
            prev = theta
            v = Hv / Hv.norm()
        values.append(theta)
        vectors.append(v)
        residuals.append(res)
    vals = torch.tensor(values, dtype=torch.float64)
    order = vals.argsort(descending=True)
    U = torch.stack(vectors, dim=1)[:, order]
    scale = float(vals.abs().max()) or 1.0
    rel = torch.tensor(residuals, dtype=torch.float64)[order] / scale
    used = op.num_matvecs - start
    return Eigenspace(vals[order], U, rel, used, rel <= tol, tol, "power", cost=float(used))
