"""gm_full: the full-space Gaussian moment with tr B_k and ‖B_k‖²_F by two-level Hutchinson,
against the dense closed form on exactly quadratic problems, with calibrated
standard errors, and next to full_mc."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import curvprobe
from curvprobe.criteria import engine
from curvprobe.criteria.spec import NOISE_STREAMS, StabilizationSpec
from curvprobe.criteria.theory import gaussian_moment
from curvprobe.testing import QuadraticProblem

from conftest import dense_hessian, mlp_problem


def dense_gm(qp: QuadraticProblem, k: int, sigma: float) -> float:
    """E q_k(ε)², ε ~ N(0, σ² I_N), from the dense per-sample derivatives."""
    a, G, Hs = qp.a, qp.per_sample_gradients, qp.per_sample_hessians
    a_k = (a[k] - a[:k].mean()) / (k + 1)
    c = (G[k] - G[:k].mean(dim=0)) / (k + 1)
    B = (Hs[k] - Hs[:k].mean(dim=0)) / (k + 1)
    return float(gaussian_moment(a_k, c, 0.5 * (B + B.T), sigma))


def dense_B(qp: QuadraticProblem, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B₁ = H_{k+1}/(k+1) and B_m = H^(k)/(k+1), dense (N, N)."""
    Hs = qp.per_sample_hessians
    return Hs[k] / (k + 1), Hs[:k].mean(dim=0) / (k + 1)


def test_parts_sketch_and_unit_terms_match_the_dense_hessian_difference():
    qp = QuadraticProblem.random(10, 24, seed=0)
    k = 6
    B1, Bm = dense_B(qp, k)
    op = engine.HessianDifference(qp, k)
    V = torch.randn(24, 5, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), (B1 - Bm) @ V, atol=1e-13)
    assert torch.allclose(op.sample_part(V), B1 @ V, atol=1e-13)
    assert torch.allclose(op.mean_part(V), Bm @ V, atol=1e-13)
    V = torch.randn(24, 2 + 2 * 3, dtype=torch.float64)  # two units of r = 3: heads, then each unit's probes
    t, f = engine.unit_terms(B1 @ V, V, Bm @ V[:, :2])
    for j in range(2):
        x, X = V[:, j], V[:, 2 + 3 * j:5 + 3 * j]
        assert float(t[j]) == pytest.approx(float((X * (B1 @ X)).sum(0).mean() - x @ Bm @ x), rel=1e-12)
        f_ref = (B1 @ X).square().sum(0).mean() - 2 * (B1 @ x) @ (Bm @ x) + (Bm @ x).square().sum()
        assert float(f[j]) == pytest.approx(float(f_ref), rel=1e-12)
    Q, trace_q, frobenius_q = engine.sample_sketch(op, 4, torch.Generator().manual_seed(0))
    assert torch.allclose(Q.T @ Q, torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert trace_q == pytest.approx(float(torch.trace(Q.T @ B1 @ Q)), rel=1e-12)
    assert frobenius_q == pytest.approx(float(torch.trace(Q.T @ B1 @ B1 @ Q)), rel=1e-12)
    # a sketch spanning the space leaves B₁ exact: only B_m's probes vary
    full = [engine.full_space_moments(qp, k, 6, seed=s, stream=NOISE_STREAMS["gm_full"], sketch_size=24)
            for s in range(2)]
    for m in full:
        assert m.trace - float(m.trace_terms.mean()) == pytest.approx(float(torch.trace(B1)), rel=1e-10)
        exact_f = m.frobenius - float(m.frobenius_terms.mean())
        assert exact_f == pytest.approx(float(B1.square().sum()), rel=1e-10)
    G = qp.per_sample_gradients
    assert full[0].c_norm2 == pytest.approx(float(((G[k] - G[:k].mean(dim=0)) / (k + 1)).square().sum()))
    assert engine.default_probes_per_unit(1) == 1 and engine.default_probes_per_unit(64) == 16
    assert engine.default_sketch_size(64, 24) == 24 and engine.default_sketch_size(1000, 10**5) == 64


def test_column_dots_over_row_blocks():
    """Column dot products in float64 over row blocks (5 columns: blocks of
    419,430 rows, so 10⁶ rows take three) equal one float64 vecdot, for a
    float32 and a float64 operand."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(1_000_000, 5, generator=gen)
    Y = torch.randn(1_000_000, 5, generator=gen, dtype=torch.float64)
    ref = torch.linalg.vecdot(X.double(), Y, dim=0)
    got = engine.column_dots(X, Y)
    assert got.dtype == torch.float64 and torch.allclose(got, ref, rtol=1e-12, atol=0)


def test_split_terms_complete_the_head_probes_exactly():
    """With complete probe sets (√|R| e_j on the rest R for the heads, √|A| e_l
    on the block A for each unit's block probes) the unit terms average to
    tr B_m and 2⟨B₁, B_m⟩ − ‖B_m‖²_F exactly: the split misses nothing; the
    block products are the dense blocks."""
    problem, k = mlp_problem(n=12), 7
    B1, Bm = dense_hessian(problem, k + 1, start=k) / (k + 1), dense_hessian(problem, k) / (k + 1)
    block = engine.split_block(problem, True)
    assert block.names == ("layers.1.weight", "layers.1.bias")
    idx = torch.cat([torch.arange(sl.start, sl.stop) for sl in block.slices])
    rest = torch.tensor([j for j in range(problem.num_params) if j not in set(idx.tolist())])
    X = torch.randn(idx.numel(), 3, dtype=torch.float64)
    one, mean = engine.HessianDifference(problem, k).block_parts(block, X)
    assert torch.allclose(one, B1[idx][:, idx] @ X, atol=1e-12)
    assert torch.allclose(mean, Bm[idx][:, idx] @ X, atol=1e-12)
    heads = torch.zeros(problem.num_params, rest.numel(), dtype=torch.float64)
    heads[rest, torch.arange(rest.numel())] = rest.numel() ** 0.5
    a = idx.numel() ** 0.5 * torch.eye(idx.numel(), dtype=torch.float64).repeat(1, rest.numel())
    A1, Am = B1[idx][:, idx], Bm[idx][:, idx]
    t_A, f_A = engine.split_terms((B1 @ heads)[idx], (Bm @ heads)[idx], a, A1 @ a, Am @ a)
    t2 = (heads * (Bm @ heads)).sum(0)
    f2 = 2 * ((B1 @ heads) * (Bm @ heads)).sum(0) - (Bm @ heads).square().sum(0)
    assert float((t2 + t_A).mean()) == pytest.approx(float(torch.trace(Bm)), rel=1e-12)
    ref = 2 * float((B1 * Bm).sum()) - float(Bm.square().sum())
    assert float((f2 + f_A).mean()) == pytest.approx(ref, rel=1e-12)
    assert engine.split_block(problem, False) is None
    assert engine.split_block(QuadraticProblem.random(5, 6, seed=0), True) is None  # one tensor: no rest
    assert engine.split_block(problem, "layers.0.*").names == ("layers.0.weight", "layers.0.bias")


def test_split_moments_are_unbiased_with_calibrated_standard_errors():
    """Over 150 seeds on a network (block = its output layer), tr B_k and
    ‖B_k‖²_F average to the dense values within 3 of their standard errors,
    and the reported standard error's RMS is the empirical spread within 25 %."""
    problem, k = mlp_problem(n=12), 7
    B = (dense_hessian(problem, k + 1, start=k) - dense_hessian(problem, k)) / (k + 1)
    stream = NOISE_STREAMS["gm_full"]
    runs = [engine.full_space_moments(problem, k, 6, seed=seed, stream=stream, probes_per_unit=2,
                                      sketch_size=0, block_probes=2) for seed in range(150)]
    for name, ref in (("trace", float(torch.trace(B))), ("frobenius", float(B.square().sum()))):
        values = np.array([getattr(m, name) for m in runs])
        errors = np.array([float(getattr(m, f"{name}_terms").std()) / np.sqrt(6) for m in runs])
        assert abs(values.mean() - ref) <= 3 * values.std() / np.sqrt(len(runs)), name
        assert np.sqrt(np.mean(errors**2)) == pytest.approx(values.std(), rel=0.25), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gm_full_agrees_with_the_dense_closed_form_within_its_standard_error(seed):
    """The issue's check on exactly quadratic problems: |gm_full − dense GM| ≤ 3 SE
    at every (k, σ)."""
    qp = QuadraticProblem.random(16, 40, seed=seed)
    ks, sigmas = [3, 8, 15], [0.05, 0.3, 1.0]
    ds = curvprobe.stabilization(qp, ks, sigmas=sigmas, estimators=["gm_full"], mc_samples=60, seed=seed)
    for k in ks:
        for sigma in sigmas:
            cell = dict(estimator="gm_full", k=k, sigma=sigma)
            value, se = float(ds["value"].sel(**cell).max()), float(ds["stderr"].sel(**cell).max())
            ref = dense_gm(qp, k, sigma)
            assert se > 0 and abs(value - ref) <= 3 * se + 1e-14 * abs(ref), (k, sigma, value, ref, se)


@pytest.mark.parametrize(("r", "s"), [(1, 0), (4, 6)])
def test_unbiased_with_calibrated_standard_errors(r, s):
    """Over 200 seeds, without and with a sketch of B₁: tr B, ‖B‖²_F and GM
    have means within 3 of their standard errors of the dense values
    (unbiased: the exact parts given Q and every unit term are, and (tr B)²
    is debiased), the reported standard error's RMS is the empirical spread
    within 20 % (the sketch adds no variance of its own), and about 95 % of
    the z-scores lie within ±2."""
    qp = QuadraticProblem.random(12, 30, seed=5)
    k, a = 9, float((qp.a[9] - qp.a[:9].mean()) / 10)
    B1, Bm = dense_B(qp, k)
    B = B1 - Bm
    runs = [engine.full_space_moments(qp, k, 8, seed=seed, stream=NOISE_STREAMS["gm_full"], probes_per_unit=r,
                                      sketch_size=s) for seed in range(200)]
    for name, ref in (("trace", float(torch.trace(B))), ("frobenius", float(B.square().sum()))):
        values = np.array([getattr(m, name) for m in runs])
        errors = np.array([float(getattr(m, f"{name}_terms").std()) / np.sqrt(8) for m in runs])
        assert abs(values.mean() - ref) <= 3 * values.std() / np.sqrt(len(runs)), name
        assert np.sqrt(np.mean(errors**2)) == pytest.approx(values.std(), rel=0.2), name
    for sigma in (0.3, 1.0):
        ref = dense_gm(qp, k, sigma)
        est = [engine.estimate(engine.gm_full(m, a, sigma)) for m in runs]
        values, errors = np.array([e[0] for e in est]), np.array([e[1] for e in est])
        assert abs(values.mean() - ref) <= 3 * values.std() / np.sqrt(len(runs))
        assert np.mean(np.abs(values - ref) <= 2 * errors) >= 0.85
        assert np.sqrt(np.mean(errors**2)) == pytest.approx(values.std(), rel=0.2)


def test_two_level_units_shrink_the_spread_when_the_new_sample_dominates():
    """The point of the split, on per-sample Hessians that differ more than
    they share (as a network's do: on tiny-gpt ⟨B₁, B_m⟩ ≈ 0.03 ‖B₁‖²_F): at
    the same number of k-sample products (8), units with r = 8 probes on
    sample k+1 give an empirical spread of tr B_k about half that of
    Hutchinson on B_k itself (8 Rademacher probes, dense; measured 0.52):
    Var ≈ 2‖B₁‖²/r + 2‖B_m‖² against 2‖B_k‖², less the diagonals'."""
    qp = QuadraticProblem.random(33, 40, seed=2, noise=3.0)
    k = 32
    B1, Bm = dense_B(qp, k)
    assert float((B1 * Bm).sum()) < 0.1 * float(B1.square().sum())
    units = [engine.full_space_moments(qp, k, 8, seed=s, stream=NOISE_STREAMS["gm_full"], probes_per_unit=8,
                                       sketch_size=0).trace for s in range(100)]
    gen = torch.Generator().manual_seed(0)
    probes = (2.0 * torch.randint(0, 2, (100, 40, 8), generator=gen) - 1).double()
    hutchinson = torch.einsum("sni,nm,smi->s", probes, B1 - Bm, probes) / 8
    assert float(np.std(units)) < 0.65 * float(hutchinson.std()), (np.std(units), hutchinson.std())


def test_gm_full_next_to_full_mc_on_a_quadratic():
    """On a quadratic the surrogate is exact: full_mc estimates the same moment."""
    qp = QuadraticProblem.random(12, 20, seed=3)
    ds = curvprobe.stabilization(qp, [5, 11], sigmas=[0.5], estimators=["full_mc", "gm_full"], mc_samples=400)
    for k in (5, 11):
        mc, gm = (ds.sel(k=k, sigma=0.5, estimator=e).max(dim="dim") for e in ("full_mc", "gm_full"))
        gap = abs(float(mc["value"]) - float(gm["value"]))
        assert gap <= 3 * float(np.hypot(mc["stderr"], gm["stderr"]))


def test_spec_refuses_gm_full_where_undefined():
    with pytest.raises(ValueError, match="p = 2"):
        StabilizationSpec(ks=(3,), sigmas=(0.1,), estimators=("gm_full",), p=3)
    with pytest.raises(ValueError, match="gm_full estimates one ordering"):
        StabilizationSpec(ks=(3,), sigmas=(0.1,), estimators=("gm_full", "full_mc"), orderings=2)
    assert "gm_full" not in curvprobe.criteria.spec.DEFAULT_ESTIMATORS
