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
deflated operator, merged, and the guard repeats.

Method ``"power"``: deflated power iteration as in PyHessian (fixed maximum
iterations, stop when the eigenvalue estimate changes by less than 1e-4
relative). Kept only as the reference baseline for benchmarks: it stops on the
eigenvalue, not the residual, so its ``converged`` flags are often False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvprobe.operators import DeflatedOperator, LinearOperator

METHODS = ("lanczos", "power")


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
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    num_matvecs: int
    converged: Tensor
    tol: float
    method: str
    guard_value: float = math.nan

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
    """One thick-restart Lanczos run: Ritz pairs plus the residual factor
    ``A U − U Θ = f sᵀ`` (absolute residuals ``‖f‖ |s|``)."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    f: Tensor
    s: Tensor


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


def _trlan(op: LinearOperator, nev: int, v0: Tensor, *, tol: float, basis_size: int,
           max_matvecs: int, generator: torch.Generator, scale: float | None = None) -> _Krylov:
    """Thick-restart Lanczos for the ``nev`` largest eigenpairs of ``op``.

    Stops when every wanted pair has ``‖A u − θ u‖ ≤ tol · scale`` (``scale``
    defaults to the current ``|θ_1|``) or after ``max_matvecs`` products.
    """
    n = op.shape[0]
    m = min(basis_size, n)
    Q = torch.zeros(n, m + 1, dtype=torch.float64, device=op.device)
    T = torch.zeros(m, m, dtype=torch.float64, device=op.device)
    Q[:, 0] = v0 / v0.norm()
    kept, used = 0, 0
    while True:
        for j in range(kept, m):
            w = op.matvec(Q[:, j])
            used += 1
            h = Q[:, : j + 1].T @ w
            w = w - Q[:, : j + 1] @ h
            h2 = Q[:, : j + 1].T @ w
            w = w - Q[:, : j + 1] @ h2
            h = h + h2
            T[: j + 1, j] = h
            T[j, : j + 1] = h
            beta = float(w.norm())
            theta, S = torch.linalg.eigh(T[: j + 1, : j + 1])
            theta, S = theta.flip(0), S.flip(1)
            top_scale = scale if scale is not None else float(theta[:nev].abs().max())
            res = beta * S[j, :].abs()
            size = j + 1
            wanted = min(nev, size)
            done = size >= nev and bool((res[:nev] <= tol * top_scale).all())
            if done or used >= max_matvecs or size >= n:
                return _Krylov(theta[:wanted], Q[:, :size] @ S[:, :wanted], res[:wanted],
                               w, S[j, :wanted].clone())
            if beta <= 1e-14 * max(top_scale, 1e-300):
                # invariant subspace found (its residuals are zero): go on in a
                # fresh random direction orthogonal to the basis.
                Q[:, j + 1] = _random_unit(n, generator, op.device, Q[:, :size])
            else:
                Q[:, j + 1] = w / beta
        # thick restart: keep the best p Ritz vectors and the residual direction
        p = min(m - 1, nev + max(1, (m - nev) // 2))
        Q[:, :p] = Q[:, :m] @ S[:, :p]
        Q[:, p] = Q[:, m]
        T.zero_()
        T[:p, :p] = torch.diag(theta[:p])
        kept = p


def _start_vector(n: int, init: Tensor | Eigenspace | None, generator: torch.Generator,
                  device: torch.device) -> Tensor:
    """Random unit vector, or — warm start — the normalised sum of the columns
    of a previous subspace plus a 1e-3 random part (so no direction is zero)."""
    x = _random_unit(n, generator, device)
    if init is None:
        return x
    U = init.vectors if isinstance(init, Eigenspace) else torch.as_tensor(init)
    U = U.to(device, torch.float64).reshape(n, -1)
    v = U.sum(dim=1)
    if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
        raise ValueError("init subspace is zero or non-finite")
    v = v / v.norm() + 1e-3 * x
    return v / v.norm()


def _check_args(op: LinearOperator, D: int, tol: float) -> None:
    n = op.shape[0]
    if not isinstance(D, int) or D < 1 or D >= n:
        raise ValueError(f"D must be an integer with 1 <= D < N = {n}, got {D!r}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")


def top_eigenspace(op: LinearOperator, D: int, *, tol: float = 1e-3, method: str = "lanczos",
                   seed: int = 0, init: Tensor | Eigenspace | None = None,
                   max_matvecs: int | None = None, basis_size: int | None = None,
                   guard_steps: int = 8, max_guard_rounds: int = 4,
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
    max_matvecs : int, optional
        Budget of operator products (default ``max(40 D, 400)``); a run that
        hits it returns with ``converged`` False where not certified.
    basis_size : int, optional
        Lanczos basis bound (default ``max(3 D, D + 40)``): memory is
        ``N × (basis_size + 1)`` float64.
    guard_steps : int
        Lanczos steps of the missed-eigenvalue guard (0 disables it; the
        result then cannot be certified and ``converged`` is all False).
    power_iters, power_tol :
        Iteration cap and eigenvalue-change tolerance of ``method="power"``.

    Returns
    -------
    Eigenspace
    """
    _check_args(op, D, tol)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    generator = torch.Generator().manual_seed(int(seed))
    n = op.shape[0]
    budget = int(max_matvecs) if max_matvecs is not None else max(40 * D, 400)
    start = op.num_matvecs
    if method == "power":
        return _power_iteration(op, D, tol=tol, generator=generator, budget=budget,
                                iters=power_iters, change_tol=power_tol, start=start)
    m = max(D + 2, int(basis_size) if basis_size is not None else max(3 * D, D + 40))
    v0 = _start_vector(n, init, generator, op.device)
    run = _trlan(op, D, v0, tol=tol, basis_size=m, max_matvecs=budget, generator=generator)
    values, vectors, residuals = run.values, run.vectors, run.residuals
    scale = float(values.abs().max())
    F, S = run.f[:, None], run.s[:, None]
    guard_value, certified = math.nan, False
    for _ in range(max_guard_rounds + 1):
        if guard_steps <= 0 or vectors.shape[1] + 1 >= n:
            certified = guard_steps > 0
            break
        spent = op.num_matvecs - start
        if spent >= budget:
            break
        theta_D = float(values.sort(descending=True).values[D - 1])
        deflated = DeflatedOperator(op, vectors)
        x0 = _random_unit(n, generator, op.device, vectors)
        guard = _trlan(deflated, 1, x0, tol=tol, basis_size=guard_steps,
                       max_matvecs=min(guard_steps, budget - spent), generator=generator,
                       scale=scale)
        guard_value = float(guard.values[0])
        if guard_value <= theta_D + tol * scale:
            certified = True
            break
        # an eigenvalue above θ_D was missed: solve for it in the complement
        spent = op.num_matvecs - start
        extra = _trlan(deflated, min(D, n - vectors.shape[1] - 1), guard.vectors[:, 0], tol=tol,
                       basis_size=m, max_matvecs=max(budget - spent, 1), generator=generator,
                       scale=scale)
        # A x = PAPx + V Vᵀ A x and Vᵀ A x = S Fᵀ x for x ⟂ V: exact residuals
        leak = (S @ (F.T @ extra.vectors)).norm(dim=0)
        values = torch.cat([values, extra.values])
        vectors = torch.cat([vectors, extra.vectors], dim=1)
        residuals = torch.cat([residuals, torch.sqrt(extra.residuals**2 + leak**2)])
        F = torch.cat([F, extra.f[:, None]], dim=1)
        S = torch.block_diag(S, extra.s[:, None])
    order = values.argsort(descending=True)[:D]
    scale = float(values[order].abs().max())
    rel = residuals[order] / scale if scale > 0 else residuals[order]
    converged = (rel <= tol) & certified
    return Eigenspace(values[order].clone(), vectors[:, order].contiguous(), rel, op.num_matvecs - start,
                      converged, tol, "lanczos", guard_value)


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
    return Eigenspace(vals[order], U, rel, op.num_matvecs - start, rel <= tol, tol, "power")
