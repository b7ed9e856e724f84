"""Test matrices with known spectra for the eigensolver tests, and the
certificate check every solve must pass."""

from __future__ import annotations

import numpy as np
import torch

from curvprobe.linalg import guard_levels


def spectrum(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "spread":
        return rng.standard_normal(n) * np.arange(1, n + 1) ** -0.5
    if kind == "clustered":
        return np.r_[10 + 1e-3 * rng.standard_normal(5), rng.uniform(-1, 1, n - 5)]
    if kind == "degenerate":
        return np.r_[[5.0] * 3, [4.0] * 3, rng.uniform(-3, 3, n - 6)]
    if kind == "negative":
        return np.r_[[-10.0] * 3, rng.uniform(-1, 0.2, n - 3)]
    if kind == "bulk":  # dense bulk: residual-only stopping skips eigenvalues here
        return rng.uniform(0.9, 1.0, n)
    raise ValueError(kind)


def random_symmetric(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))
    return (Q * lam) @ Q.T


def check_certified(es, A: np.ndarray, D: int, tol: float) -> None:
    ref = np.sort(np.linalg.eigvalsh(A))[::-1][:D]
    scale = abs(ref).max()
    assert es.all_converged
    assert es.values.shape == (D,) and es.vectors.shape == (A.shape[0], D)
    assert np.all(np.diff(es.values.numpy()) <= 0)
    # a relative residual r bounds the distance to *some* eigenvalue; the guard
    # makes it the right one: θ_i within tol·|θ_1| of λ_i
    assert np.abs(es.values.numpy() - ref).max() <= tol * scale
    U = es.vectors
    assert torch.allclose(U.T @ U, torch.eye(D, dtype=torch.float64), atol=1e-10)
    R = torch.as_tensor(A) @ U - U * es.values
    true = R.norm(dim=0) / es.values.abs().max()
    assert torch.allclose(true, es.residuals, rtol=1e-6, atol=1e-12)
    assert float(es.residuals.max()) <= tol


def reference(lam: np.ndarray, D: int, which: str) -> np.ndarray:
    """The D eigenvalues ``which`` selects from the spectrum ``lam``, sorted decreasing."""
    desc = np.sort(lam)[::-1]
    if which == "largest":
        chosen = desc[:D]
    elif which == "smallest":
        chosen = desc[::-1][:D]
    elif which == "both_ends":
        chosen = np.r_[desc[: (D + 1) // 2], desc[::-1][: D // 2]]
    else:
        chosen = desc[np.argsort(-np.abs(desc), kind="stable")][:D]
    return np.sort(chosen)[::-1]


def check_certified_end(es, A: np.ndarray, D: int, tol: float, which: str, *, resolved: bool = True) -> None:
    """What ``top_eigenspace(which=...)`` certifies, checked against eigh: every
    pair's true residual is within tol·s with s ≤ ‖A‖, so each θ lies within
    tol·s of an eigenvalue, and every eigenvalue beyond the guard's levels has
    a returned value within tol·s of it. On a spectrum resolved at tol·s
    (``resolved``) the values are then the selected ones to tol·s."""
    lam = np.linalg.eigvalsh(A)
    norm = np.abs(lam).max()
    assert es.all_converged and es.which == which
    assert es.values.shape == (D,) and np.all(np.diff(es.values.numpy()) <= 0)
    assert 0 < es.scale <= norm * (1 + 1e-12)
    U = es.vectors
    assert torch.allclose(U.T @ U, torch.eye(D, dtype=torch.float64), atol=1e-10)
    true = (torch.as_tensor(A) @ U - U * es.values).norm(dim=0) / es.scale
    assert torch.allclose(true, es.residuals, rtol=1e-6, atol=1e-12)
    assert float(true.max()) <= tol
    theta, bound = es.values.numpy(), tol * es.scale * (1 + 1e-9)
    assert all(np.abs(lam - t).min() <= bound for t in theta)
    low, high = guard_levels(es.values, D, tol, es.scale, which)
    assert all(np.abs(theta - x).min() <= bound for x in lam if x < low or x > high)
    if resolved:
        assert np.abs(theta - reference(lam, D, which)).max() <= bound
