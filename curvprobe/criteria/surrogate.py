"""Quadratic surrogate of the loss increment inside the top-D eigenspace.

Notation (Kiselev & Grabovoy; ``docs/concepts.md``). At the trained point ``w*``,
probing ``w = w* + U_D z`` with ``z ~ N(0, σ² I_D)``, the increment
``δ_k(w) = L_{k+1}(w) − L_k(w) = (ℓ_{k+1}(w) − L_k(w))/(k+1)`` is approximated by

    q_k(z) = a_k + c_kᵀ z + ½ zᵀ B_k z,
    a_k = (ℓ_{k+1}(w*) − L_k(w*)) / (k+1)
    c_k = U_Dᵀ (g_{k+1} − g^(k)) / (k+1)
    B_k = (U_Dᵀ H_{k+1} U_D − T_k) / (k+1),   T_k = U_Dᵀ H^(k) U_D,

where ``T_k`` is the Rayleigh–Ritz matrix the eigensolver already produced
(:attr:`curvprobe.Eigenspace.ritz_matrix`), so ``B_k`` costs D HVPs on the one
sample k+1. :class:`QuadraticSurrogate` holds ``(a, c, B, σ)`` and gives

- ``GM = E[q(z)²]`` in closed form (:func:`curvprobe.criteria.theory.gaussian_moment`);
- the quadratic Monte Carlo estimate ``(1/S) Σ_s |q(z_s)|^p``, vectorised,
  O(S D²), with its standard error (an :class:`Estimate`).

Units: a in loss, c in loss/param, B in loss/param², σ and z in param; GM
and the p = 2 estimates in loss². Everything is float64.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from numpy.typing import ArrayLike
from torch import Tensor

from curvprobe.criteria.engine import mean_stderr, surrogate_terms, surrogate_values
from curvprobe.criteria.theory import check_sigma, check_symmetric, gaussian_moment

__all__ = ["Estimate", "QuadraticSurrogate"]

DERIVATIVE_SYMMETRY_RTOL = 1e-4
"""Largest relative asymmetry accepted in the projected Hessians handed to
:meth:`QuadraticSurrogate.from_derivatives` before they are symmetrised
(HVP round-off in a float32 model is far below it; a transposed or
mis-projected matrix is far above it)."""


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate with its diagnostics.

    Attributes
    ----------
    mean : float
        The estimate ``(1/S) Σ_s x_s``.
    stderr : float
        Its standard error ``std(x, ddof=1) / √S``.
    mc_samples : int
        ``S``, the number of integrand evaluations behind it.
    """

    mean: float
    stderr: float
    mc_samples: int

    @property
    def num_samples(self) -> int:
        """Deprecated name of :attr:`mc_samples`."""
        warnings.warn("Estimate.num_samples is deprecated: use Estimate.mc_samples", DeprecationWarning,
                      stacklevel=2)
        return self.mc_samples

    @classmethod
    def from_samples(cls, x: ArrayLike | Tensor) -> Estimate:
        """Mean and standard error of i.i.d. samples ``x`` (S,), in float64.

        Raises ``ValueError`` if ``x`` is not 1-D, has fewer than 2 samples (a
        standard error needs ≥ 2) or holds non-finite values.
        """
        t = torch.as_tensor(x, dtype=torch.float64)
        if t.dim() != 1:
            raise ValueError(f"samples must be 1-D (S,), got shape {tuple(t.shape)}")
        S = t.numel()
        if S < 2:
            raise ValueError(f"a standard error needs >= 2 samples, got {S}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("samples must be finite")
        mean, stderr = mean_stderr(t)
        return cls(mean=float(mean), stderr=float(stderr), mc_samples=S)


@dataclass(frozen=True, eq=False)
class QuadraticSurrogate:
    """``q(z) = a + cᵀz + ½ zᵀBz`` with probing law ``z ~ N(0, σ² I_D)``.

    All coefficients are stored as float64 on ``c``'s device.

    Parameters
    ----------
    a : scalar Tensor or float
        Constant term (loss).
    c : Tensor (D,)
        Linear term (loss/param).
    B : Tensor (D, D)
        Quadratic term, symmetric (``max|B − Bᵀ| ≤ 1e-10 · max|B|``)
        (loss/param²).
    sigma : float > 0
        Probing scale σ (param).

    Raises
    ------
    ValueError
        On non-finite values, wrong shapes, an asymmetric ``B`` or ``σ ≤ 0``.
    """

    a: Tensor
    c: Tensor
    B: Tensor
    sigma: float

    def __post_init__(self) -> None:
        c = torch.as_tensor(self.c, dtype=torch.float64)
        a = torch.as_tensor(self.a, dtype=torch.float64, device=c.device)
        B = torch.as_tensor(self.B, dtype=torch.float64, device=c.device)
        sigma = check_sigma(self.sigma)
        if sigma.numel() != 1:
            raise ValueError(f"sigma must be a scalar, got shape {tuple(sigma.shape)}")
        if a.numel() != 1:
            raise ValueError(f"a must be a scalar, got shape {tuple(a.shape)}")
        if c.dim() != 1 or c.numel() < 1:
            raise ValueError(f"c must have shape (D,) with D >= 1, got {tuple(c.shape)}")
        D = c.numel()
        if B.shape != (D, D):
            raise ValueError(f"B must have shape ({D}, {D}) to match c, got {tuple(B.shape)}")
        for name, t in (("a", a), ("c", c), ("B", B)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite")
        check_symmetric(B)
        object.__setattr__(self, "a", a.reshape(()))
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "B", B)
        object.__setattr__(self, "sigma", float(sigma))

    @property
    def D(self) -> int:
        """Subspace dimension."""
        return self.c.numel()

    def __call__(self, z: Tensor) -> Tensor:
        """``q(z) = a + cᵀz + ½ zᵀBz`` for ``z`` (..., D) → float64 (...,)."""
        z = torch.as_tensor(z, dtype=torch.float64, device=self.c.device)
        if z.dim() < 1 or z.shape[-1] != self.D:
            raise ValueError(f"z must have shape (..., {self.D}), got {tuple(z.shape)}")
        return surrogate_values(self.a, self.c, self.B, z)

    def gm(self) -> Tensor:
        """Gaussian moment ``GM = E[q(z)²]``, closed form (float64 scalar, loss²):
        ``a² + a σ² tr(B) + σ² ‖c‖² + (σ⁴/4)(2 tr(B²) + tr(B)²)``."""
        return gaussian_moment(self.a, self.c, self.B, self.sigma)

    def sample_z(self, mc_samples: int, generator: torch.Generator) -> Tensor:
        """``σ · randn(S, D)`` from ``generator``: float64 (S, D), the draws that
        :meth:`quad_mc` uses (without antithetic pairs)."""
        S = _check_count(mc_samples)
        return self.sigma * torch.randn(S, self.D, generator=generator, dtype=torch.float64,
                                        device=self.c.device)

    def quad_mc(self, mc_samples: int, generator: torch.Generator, *, p: float = 2,
                antithetic: bool = False) -> Estimate:
        """Quadratic Monte Carlo estimate of ``E|q(z)|^p``, ``z ~ N(0, σ² I_D)``.

        ``(1/S) Σ_s |q(z_s)|^p`` with ``z_s`` drawn from ``generator``,
        evaluated in one vectorised pass (O(S D²) time, O(S D) memory).

        Parameters
        ----------
        mc_samples : int
            ``S`` ≥ 2; even when ``antithetic``.
        generator : torch.Generator
            Source of the draws (on ``c``'s device); the same generator state
            gives the same estimate.
        p : float ≥ 1
            Aggregation order; ``p = 2`` estimates GM.
        antithetic : bool
            Draw ``S/2`` points ``z_j`` and use the pairs ``(z_j, −z_j)``. The
            standard error is then that of the ``S/2`` independent pair means
            ``½(|q(z_j)|^p + |q(−z_j)|^p)``; ``mc_samples`` reports ``S``.

        Returns
        -------
        Estimate
            Mean (loss^p), standard error and ``S``.
        """
        S = _check_count(mc_samples)
        if not (math.isfinite(p) and p >= 1):
            raise ValueError(f"p must be finite and >= 1, got {p!r}")
        if antithetic:
            if S % 2:
                raise ValueError(f"antithetic sampling needs an even mc_samples, got {S}")
            if S < 4:
                raise ValueError(f"antithetic sampling needs >= 4 samples (2 pairs) for a "
                                 f"standard error, got {S}")
            z = self.sample_z(S // 2, generator)
            vals = 0.5 * (self(z).abs() ** p + self(-z).abs() ** p)
            est = Estimate.from_samples(vals)
            return Estimate(mean=est.mean, stderr=est.stderr, mc_samples=S)
        return Estimate.from_samples(self(self.sample_z(S, generator)).abs() ** p)

    @classmethod
    def from_derivatives(cls, loss_next: float | Tensor, mean_loss_k: float | Tensor,
                         grad_next_proj: Tensor, grad_mean_proj: Tensor, hess_next_proj: Tensor,
                         ritz_matrix: Tensor, k: int, sigma: float) -> QuadraticSurrogate:
        """Surrogate coefficients from derivatives at ``w*``.

            a_k = (ℓ_{k+1} − L_k) / (k+1)
            c_k = (U_Dᵀ g_{k+1} − U_Dᵀ g^(k)) / (k+1)
            B_k = (U_Dᵀ H_{k+1} U_D − T_k) / (k+1)

        The differences are formed before dividing (the exact increment
        identity; never the difference of two separately rounded means).

        Matrices computed from HVPs are symmetric only up to round-off: each is
        checked (relative asymmetry ≤ :data:`DERIVATIVE_SYMMETRY_RTOL`) and
        replaced by its symmetric part, which is all ``zᵀBz`` sees.

        Parameters
        ----------
        loss_next : float or scalar Tensor
            ``ℓ_{k+1}(w*)``, the loss of sample k+1 (loss).
        mean_loss_k : float or scalar Tensor
            ``L_k(w*)``, the mean loss of samples 1..k (loss).
        grad_next_proj : Tensor (D,)
            ``U_Dᵀ g_{k+1}(w*)`` (loss/param).
        grad_mean_proj : Tensor (D,)
            ``U_Dᵀ g^(k)(w*)`` (loss/param).
        hess_next_proj : Tensor (D, D)
            ``U_Dᵀ H_{k+1}(w*) U_D`` (D HVPs on sample k+1; loss/param²).
        ritz_matrix : Tensor (D, D)
            ``T_k = U_Dᵀ H^(k)(w*) U_D`` (loss/param²).
        k : int ≥ 1
            The prefix size.
        sigma : float > 0
            Probing scale (param).

        Returns
        -------
        QuadraticSurrogate
            float64 coefficients ``a_k``, ``c_k``, ``B_k`` on the device of
            ``grad_next_proj``.

        Raises
        ------
        ValueError
            On ``k < 1``, mismatched shapes, non-finite or asymmetric matrices.
        """
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        kp1 = float(int(k) + 1)
        gn = torch.as_tensor(grad_next_proj, dtype=torch.float64)
        dev = gn.device
        gm = torch.as_tensor(grad_mean_proj, dtype=torch.float64, device=dev)
        if gn.dim() != 1 or gn.shape != gm.shape:
            raise ValueError(f"grad_next_proj and grad_mean_proj must both be (D,), got "
                             f"{tuple(gn.shape)} and {tuple(gm.shape)}")
        mats = []
        for name, m in (("hess_next_proj", hess_next_proj), ("ritz_matrix", ritz_matrix)):
            m = torch.as_tensor(m, dtype=torch.float64, device=dev)
            if m.shape != (gn.numel(), gn.numel()):
                raise ValueError(f"{name} must be ({gn.numel()}, {gn.numel()}), got {tuple(m.shape)}")
            if not bool(torch.isfinite(m).all()):
                raise ValueError(f"{name} must be finite")
            check_symmetric(m, name, rtol=DERIVATIVE_SYMMETRY_RTOL)
            mats.append(0.5 * (m + m.T))
        ln = torch.as_tensor(loss_next, dtype=torch.float64, device=dev)
        lk = torch.as_tensor(mean_loss_k, dtype=torch.float64, device=dev)
        c, B = surrogate_terms(int(k), gn, gm, mats[0], mats[1])
        return cls(a=(ln - lk) / kp1, c=c, B=B, sigma=sigma)

    def __repr__(self) -> str:
        return f"QuadraticSurrogate(D={self.D}, a={float(self.a):.4g}, sigma={self.sigma:g})"


def _check_count(mc_samples: int) -> int:
    if isinstance(mc_samples, bool) or int(mc_samples) != mc_samples or mc_samples < 2:
        raise ValueError(f"mc_samples must be an integer >= 2 (a standard error needs >= 2 "
                         f"samples), got {mc_samples!r}")
    return int(mc_samples)
