"""Layer spectra and Kronecker alignment (docs/spectral.md) against dense and closed-form truth.

- σ against a dense SVD of the gradient (torch.func.grad) and h against the
  dense layer block of torch.func.hessian, on a float64 MLP and SmallCNN;
- h against the closed form of least squares (no autograd in the reference);
- K-FAC factors against explicit per-sample output gradients and explicit
  input rows (closed forms for MSE and cross-entropy, a sequence layer, and a
  convolution with hand-extracted patches);
- the exact slope identities α = β + φ + slope(log χ) and α_Kron = β + φ;
- layer selection, every bad input of the issue, netCDF round trips, a
  TinyGPT smoke run over the attention projections, and the figures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from matplotlib.figure import Figure
from torch import nn

from curvprobe import Problem, results
from curvprobe.app import plots
from curvprobe.spectral import (
    block_hvp,
    directional_curvature,
    gradient_svd,
    kronecker_alignment,
    kronecker_factors,
    layer_spectra,
    select_layers,
)

from conftest import dense_hessian

TOL = 1e-8


@pytest.fixture(scope="module")
def problems(small_problems) -> dict[str, Problem]:
    """conftest's session problems: their dense Hessians are cached across test files."""
    return small_problems


@pytest.fixture(scope="module")
def gpt_spectra(problems) -> xr.Dataset:
    return layer_spectra(problems["gpt"], top_k=8)


@pytest.fixture(scope="module")
def gpt_kron(problems) -> xr.Dataset:
    return kronecker_alignment(problems["gpt"], top_k=8)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------- #
# singular values and h against dense ground truth
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["block", "full"])
def test_singular_values_and_h_match_dense_hessian(problems, model, method):
    problem = problems[model]
    k = problem.num_samples // 2  # a strict prefix: "the first k samples"
    H = dense_hessian(problem, k).numpy()
    w = problem.params
    G_flat = torch.func.grad(lambda x: problem.chunk_losses(x, 0, k).sum() / k)(w).numpy()
    layers = select_layers(problem)
    assert [layer.kind for layer in layers] == (["linear"] * 2 if model == "mlp"
                                                else ["conv2d", "conv2d", "linear"])
    for layer in layers:
        block = layer.flat
        G = G_flat[block].reshape(layer.param_shape).reshape(layer.matrix_shape[0], -1)
        U, S, Vt = np.linalg.svd(G)
        K = layer.max_rank
        h_dense = []
        for j in range(K):
            e = np.outer(U[:, j], Vt[j]).reshape(-1)
            h_dense.append(e @ H[block, block] @ e)
        ds = layer_spectra(problem, layers=layer.name, top_k=K, k=k, method=method)
        assert ds.attrs["h_method"] == method
        assert ds.sizes == {"layer": 1, "rank": K, "rank_model": 3}
        assert rel(ds.singular_value.values[0], S[:K]) <= TOL
        assert rel(ds.h.values[0], h_dense) <= TOL
        W = w[block].view(layer.param_shape).reshape(layer.matrix_shape[0], -1).numpy()
        assert rel(ds.weight_sigma.values[0], np.linalg.svd(W, compute_uv=False)[:K]) <= TOL
        assert int(ds.num_hvps[0]) == K and int(ds.hvp_calls[0]) == 1
        assert ds.attrs["num_samples"] == k


def test_transposed_embedding_h_matches_dense_hessian(problems):
    """Embedding tables are analysed transposed (dim × vocab); h is layout-independent."""
    problem = problems["gpt"]
    H = dense_hessian(problem, problem.num_samples).numpy()
    layer = select_layers(problem, "wte.weight")[0]
    G = problem.gradient().numpy()[layer.flat].reshape(layer.param_shape)  # vocab × dim
    U, S, Vt = np.linalg.svd(G.T)  # dim × vocab
    h_dense = []
    for j in range(5):
        e = np.outer(U[:, j], Vt[j]).T.reshape(-1)  # back to the stored layout
        h_dense.append(e @ H[layer.flat, layer.flat] @ e)
    ds = layer_spectra(problem, layers="wte.weight", top_k=5)
    assert rel(ds.singular_value.values[0], S[:5]) <= TOL
    assert rel(ds.h.values[0], h_dense) <= TOL


class Conv1D(nn.Module):
    """Hugging Face GPT-2 style ``Conv1D``: ``y = x W + b`` with W stored (in, out)."""

    def __init__(self, nf: int, nx: int, generator: torch.Generator) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf, generator=generator, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(nf, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def test_hf_conv1d_least_squares_closed_form():
    """Duck-typed HF Conv1D: G, h and the factors in out × in orientation, in closed form."""
    gen = torch.Generator().manual_seed(6)
    n, nx, nf = 25, 6, 4
    X = torch.randn(n, nx, generator=gen, dtype=torch.float64)
    Y = torch.randn(n, nf, generator=gen, dtype=torch.float64)
    model = nn.Sequential(Conv1D(nf, nx, gen)).eval()
    problem = Problem(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(-1), X, Y, batch_size=7)
    layer = select_layers(problem)[0]
    assert (layer.kind, layer.matrix_shape, layer.transposed) == ("hf_conv1d", (nf, nx), True)
    R = (X @ model[0].weight + model[0].bias).detach() - Y
    G = (R.T @ X / n).numpy()  # out × in
    _, S, Vt = np.linalg.svd(G)
    C = (X.T @ X / n).numpy()
    ds = layer_spectra(problem, top_k=4)
    assert rel(ds.singular_value.values[0], S[:4]) <= 1e-12
    assert rel(ds.h.values[0], [Vt[j] @ C @ Vt[j] for j in range(4)]) <= 1e-12
    f = kronecker_factors(problem)["0.weight"]
    assert rel(f.c_a, X.T @ X / n) <= 1e-13 and rel(f.c_delta, R.T @ R / n) <= 1e-13
    assert rel(f.gradient, G) <= 1e-13
    kron = kronecker_alignment(problem, top_k=4)
    assert rel(kron.v_c_a_v.values[0], [Vt[j] @ C @ Vt[j] for j in range(4)]) <= 1e-12


@pytest.mark.parametrize("method", ["block", "full"])
def test_one_hvp_per_direction_equals_batched(problems, method):
    problem = problems["cnn"]
    layer = select_layers(problem, "conv2.weight")[0]
    _, U, Vh, rank = gradient_svd(layer, problem.gradient(), 3)
    h_batched, calls_batched = directional_curvature(problem, layer, U, Vh, method=method)
    h_single, calls_single = directional_curvature(problem, layer, U, Vh, method=method,
                                                   directions_per_call=1)
    assert (calls_batched, calls_single, rank) == (1, 3, 3)
    assert rel(h_single, h_batched) <= 1e-12


@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse", "batched_double_backward"])
def test_block_hvp_is_the_dense_hessian_block(problems, mode):
    """block_hvp(V) = H[W, W] V for arbitrary V (both HVP kernels; prefixes: test above)."""
    problem = problems["gpt"]
    k = problem.num_samples
    H = dense_hessian(problem, k)
    gen = torch.Generator().manual_seed(7)
    for layer in select_layers(problem, ["blocks.0.attn.c_k.weight", "wte.weight"]):
        V = torch.randn(layer.flat.stop - layer.flat.start, 4, generator=gen, dtype=torch.float64)
        assert rel(block_hvp(problem, layer, V, k, mode=mode), H[layer.flat, layer.flat] @ V) <= 1e-10


def test_problem_subclass_falls_back_to_full_hvp(problems):
    """An adapter that overrides chunk_losses must not be bypassed by the block path."""
    base = problems["mlp"]

    class Scaled(Problem):
        def chunk_losses(self, w, a, b):
            return 3.0 * super().chunk_losses(w, a, b)

    scaled = Scaled(base.model, base.loss_fn, base.inputs, base.targets, batch_size=7)
    ds = layer_spectra(scaled, layers="layers.0.weight", top_k=5)
    ref = layer_spectra(base, layers="layers.0.weight", top_k=5)
    assert ds.attrs["h_method"] == "full"
    assert rel(ds.h, 3.0 * ref.h) <= 1e-12 and rel(ds.singular_value, 3.0 * ref.singular_value) <= 1e-12
    with pytest.raises(ValueError, match="overrides chunk_losses"):
        block_hvp(scaled, select_layers(scaled, "layers.0.weight")[0], torch.ones(40, 1))


def test_h_least_squares_closed_form():
    """ℓ_i = ½‖W x_i − y_i‖²: H_WW = (XᵀX/k) ⊗ I, so h_j = v_jᵀ (XᵀX/k) v_j, G = RᵀX/k."""
    gen = torch.Generator().manual_seed(3)
    n, d_in, d_out, k = 40, 7, 5, 31
    X = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    Y = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
    model = nn.Linear(d_in, d_out, bias=False).double().eval()
    problem = Problem(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(-1), X, Y, batch_size=6)
    W = model.weight.detach()
    R = X[:k] @ W.T - Y[:k]
    G = (R.T @ X[:k] / k).numpy()
    _, S, Vt = np.linalg.svd(G)
    C = (X[:k].T @ X[:k] / k).numpy()
    ds = layer_spectra(problem, top_k=5, k=k)
    assert rel(ds.singular_value.values[0], S[:5]) <= 1e-12
    assert rel(ds.h.values[0], [Vt[j] @ C @ Vt[j] for j in range(5)]) <= 1e-12


# --------------------------------------------------------------------------- #
# Kronecker factors against explicit Gauss–Newton computations
# --------------------------------------------------------------------------- #


def _linear_problem(loss: str, k_total: int = 23, batch_size: int = 5):
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(k_total, 4, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 3).double().eval()
    if loss == "mse":
        Y = torch.randn(k_total, 3, generator=gen, dtype=torch.float64)
        fn = lambda out, t: 0.5 * ((out - t) ** 2).sum(-1)  # noqa: E731
    else:
        Y = torch.randint(0, 3, (k_total,), generator=gen)
        fn = lambda out, t: F.cross_entropy(out, t, reduction="none")  # noqa: E731
    return model, X, Y, Problem(model, fn, X, Y, batch_size=batch_size)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_kronecker_factors_single_linear_layer(loss):
    model, X, Y, problem = _linear_problem(loss)
    k = 17
    Z = (X[:k] @ model.weight.T + model.bias).detach()
    # ∂(½‖z − y‖²)/∂z for MSE, ∂CE/∂z for cross-entropy
    delta = Z - Y[:k] if loss == "mse" else torch.softmax(Z, -1) - F.one_hot(Y[:k], 3).double()
    f = kronecker_factors(problem, k=k)["weight"]
    assert f.rows == k and f.num_samples == k
    assert rel(f.c_a, X[:k].T @ X[:k] / k) <= 1e-13
    assert rel(f.c_delta, delta.T @ delta / k) <= 1e-13
    assert rel(f.gradient, delta.T @ X[:k] / k) <= 1e-13


def test_kronecker_factors_sequence_rows():
    """A Linear on (B, T, n) with a per-sequence mean token loss: rows = B·T, δ carries 1/T."""
    gen = torch.Generator().manual_seed(2)
    B, T, n, m = 9, 4, 5, 3
    X = torch.randn(B, T, n, generator=gen, dtype=torch.float64)
    Y = torch.randn(B, T, m, generator=gen, dtype=torch.float64)
    model = nn.Linear(n, m, bias=False).double().eval()
    problem = Problem(model, lambda out, t: (0.5 * ((out - t) ** 2).sum(-1)).mean(-1), X, Y,
                      batch_size=4)
    A = X.reshape(-1, n)
    delta = ((X @ model.weight.T).detach() - Y).reshape(-1, m) / T
    f = kronecker_factors(problem)["weight"]
    assert f.rows == B * T and f.rows_per_sample == T
    assert rel(f.c_a, A.T @ A / (B * T)) <= 1e-13
    assert rel(f.c_delta, delta.T @ delta / (B * T)) <= 1e-13


def test_kronecker_factors_conv_explicit_patches():
    """Conv2d (stride 2, padding 1): A rows are hand-extracted zero-padded patches."""
    gen = torch.Generator().manual_seed(4)
    B, C, S, m = 5, 2, 5, 3
    conv = nn.Conv2d(C, m, 3, stride=2, padding=1).double()
    model = nn.Sequential(conv, nn.Flatten()).eval()
    X = torch.randn(B, C, S, S, generator=gen, dtype=torch.float64)
    Z = model(X).detach()
    Y = torch.randn_like(Z)
    problem = Problem(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(-1), X, Y, batch_size=2)
    Xp = F.pad(X, (1, 1, 1, 1))
    out_size = (S + 2 - 3) // 2 + 1
    patches, deltas = [], []
    D = (Z - Y).view(B, m, out_size, out_size)
    for i in range(B):
        for r in range(out_size):
            for c in range(out_size):
                patches.append(Xp[i, :, 2 * r:2 * r + 3, 2 * c:2 * c + 3].reshape(-1))
                deltas.append(D[i, :, r, c])
    A, delta = torch.stack(patches), torch.stack(deltas)
    rows = B * out_size**2
    f = kronecker_factors(problem)["0.weight"]
    assert f.rows == rows
    assert rel(f.c_a, A.T @ A / rows) <= 1e-13
    assert rel(f.c_delta, delta.T @ delta / rows) <= 1e-13
    G = problem.gradient()[problem.layer_slices()["0.weight"]].view(m, -1)
    assert rel(f.gradient, G) <= 1e-12


@pytest.mark.parametrize("model", ["cnn", "gpt"])
def test_hooked_rows_reproduce_the_gradient(problems, model):
    """δᵀA/k = ∇_W L_k for every layer (conv via unfold, attention with tokens as rows)."""
    problem = problems[model]
    factors = kronecker_factors(problem, k=problem.num_samples - 1)
    g = problem.gradient(k=problem.num_samples - 1)
    for layer in select_layers(problem):
        assert rel(factors[layer.name].gradient, layer.matrix(g)) <= 1e-12
    if model == "gpt":
        seq = problem.inputs[0].shape[1]
        assert {f.rows_per_sample for f in factors.values()} == {seq}


def test_alignment_definitions_and_slope_identities(problems, gpt_kron, gpt_spectra):
    ds = gpt_kron
    problem = problems["gpt"]
    factors = kronecker_factors(problem)
    name = "blocks.0.attn.c_q.weight"
    layer = select_layers(problem, name)[0]
    _, U, Vh, _ = gradient_svd(layer, problem.gradient(), 8)
    f = factors[name]
    row = ds.sel(layer=name)
    lam_d = torch.linalg.eigvalsh(f.c_delta).flip(0)[:8]
    lam_a = torch.linalg.eigvalsh(f.c_a).flip(0)[:8]
    qd = torch.stack([U[:, j] @ f.c_delta @ U[:, j] for j in range(8)])
    qa = torch.stack([Vh[j] @ f.c_a @ Vh[j] for j in range(8)])
    assert rel(row.rho_delta, qd / lam_d) <= 1e-12
    assert rel(row.rho_a, qa / lam_a) <= 1e-12
    assert rel(row.Phi, qd * qa / (lam_d * lam_a)) <= 1e-12
    assert rel(row.Lambda, lam_d * lam_a) <= 1e-12
    assert rel(row.h_kron, qd * qa) <= 1e-12
    assert rel(row.chi, row.h.values / (qd * qa).numpy()) <= 1e-12
    assert rel(row.h, gpt_spectra.h.sel(layer=name)) <= 1e-12
    fitted = np.isfinite(ds.alpha.values)
    assert fitted.sum() >= 4
    a, b, p = ds.alpha.values[fitted], ds.beta.values[fitted], ds.phi.values[fitted]
    np.testing.assert_allclose(a, b + p + ds.chi_slope.values[fitted], atol=1e-10)
    np.testing.assert_allclose(ds.alpha_kron.values[fitted], b + p, atol=1e-10)
    np.testing.assert_allclose(ds.alpha_pred_2_phi.values[fitted], 2 + p, atol=1e-14)
    assert (ds.fit_reason.values[~fitted] != "").all()
    assert float(ds.hook_gradient_error.max()) <= 1e-12


# --------------------------------------------------------------------------- #
# selection
# --------------------------------------------------------------------------- #


def test_layer_selection_defaults_and_globs(problems, gpt_spectra):
    problem = problems["gpt"]
    default = [layer.name for layer in select_layers(problem)]
    assert "wte.weight" not in default  # embeddings only when named
    assert default[-1] == "lm_head.weight" and len(default) == 7
    attn = select_layers(problem, "blocks.*.attn.*")
    assert [layer.name.split(".")[-2] for layer in attn] == ["c_q", "c_k", "c_v", "c_proj"]
    assert {layer.group for layer in attn} == {"attention"}
    both = select_layers(problem, ["lm_head.weight", "blocks.0.mlp.*", "lm_head.weight"])
    assert [layer.name for layer in both] == ["blocks.0.mlp.c_fc.weight",
                                              "blocks.0.mlp.c_proj.weight", "lm_head.weight"]
    everything = [layer.name for layer in select_layers(problem, "*")]
    assert everything[0] == "wte.weight" and len(everything) == 8
    emb = select_layers(problem, "wte.weight")[0]
    assert emb.kind == "embedding" and emb.matrix_shape == (12, 11) and emb.transposed
    assert list(gpt_spectra.layer.values) == default
    assert list(gpt_spectra.layer_group.values) == ["attention"] * 4 + ["mlp"] * 2 + ["head"]


def test_embedding_named_explicitly(problems):
    problem = problems["gpt"]
    ds = layer_spectra(problem, layers="wte.weight", top_k=5)
    assert list(ds.layer.values) == ["wte.weight"] and np.isfinite(ds.h.values).all()
    factors = kronecker_factors(problem, layers="wte.weight")["wte.weight"]
    emb = select_layers(problem, "wte.weight")[0]
    assert rel(factors.gradient, emb.matrix(problem.gradient())) <= 1e-12
    counts = torch.bincount(problem.inputs[0].reshape(-1), minlength=11).double()
    assert rel(factors.c_a, torch.diag(counts) / counts.sum()) <= 1e-14


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #


def test_unknown_layer_lists_available(problems):
    problem = problems["mlp"]
    for bad in ("layers.7.weight", ["layers.0.weight", "nope*"]):
        with pytest.raises(ValueError, match=r"available layers: layers\.0\.weight, layers\.1\.weight"):
            layer_spectra(problem, layers=bad, top_k=2)
    with pytest.raises(ValueError, match="available layers"):
        kronecker_alignment(problem, layers="missing", top_k=2)


def test_non_matrix_parameter_is_an_error(problems):
    with pytest.raises(ValueError, match=r"shape \(8,\).*2-D weight"):
        layer_spectra(problems["mlp"], layers="layers.0.bias", top_k=2)
    with pytest.raises(ValueError, match=r"2-D weight"):
        kronecker_alignment(problems["cnn"], layers="conv1.bias", top_k=1)
    with pytest.raises(TypeError):
        select_layers(problems["mlp"], [3])


def test_top_k_larger_than_rank_is_an_error(problems):
    with pytest.raises(ValueError, match=r"top_k=6 exceeds the rank of layer\(s\) layers.0.weight"):
        layer_spectra(problems["mlp"], layers="layers.0.weight", top_k=6)
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        kronecker_alignment(problems["cnn"], top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        layer_spectra(problems["mlp"], top_k=0)
    with pytest.raises(ValueError, match="k must be"):
        layer_spectra(problems["mlp"], layers="layers.0.weight", top_k=2, k=10_000)


def test_too_few_positive_h_gives_nan_with_reason():
    """A concave loss in W: every h < 0, so α and s are NaN with a reason; γ still fits."""
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    model = nn.Linear(6, 5, bias=False).double().eval()
    problem = Problem(model, lambda out, t: -0.5 * ((out - t) ** 2).sum(-1), X,
                      torch.randn(30, 5, generator=gen, dtype=torch.float64), batch_size=8)
    ds = layer_spectra(problem, top_k=5)
    assert (ds.h.values < 0).all()
    assert math.isnan(float(ds.alpha[0])) and math.isnan(float(ds.s_hessian[0]))
    assert math.isfinite(float(ds.gamma[0]))
    assert "fewer than 3 positive h" in str(ds.fit_reason.values[0])
    kron = kronecker_alignment(problem, top_k=5)
    assert math.isnan(float(kron.alpha[0])) and "fewer than 3" in str(kron.fit_reason.values[0])


def test_rank_deficient_gradient_is_reported(problems):
    """Cross-entropy rows of the last layer's gradient sum to zero: rank ≤ classes − 1."""
    ds = layer_spectra(problems["mlp"], layers="layers.1.weight", top_k=3)
    assert int(ds.numerical_rank[0]) == 2 and int(ds.n_fit[0]) == 2
    assert "numerical rank 2 < top_k=3" in str(ds.fit_reason.values[0])
    assert math.isnan(float(ds.alpha[0])) and math.isfinite(float(ds.pr_sigma2[0]))


def test_kronecker_refuses_unsupported_parameters():
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))

        def forward(self, x):
            return x @ self.W.T

    problem = Problem(Raw().eval(), lambda out, t: 0.5 * ((out - t) ** 2).sum(-1),
                      torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64))
    ds = layer_spectra(problem, layers="W", top_k=3)  # any matrix has a spectrum …
    assert np.isfinite(ds.h.values).all() and str(ds.layer_kind.values[0]) == "matrix"
    with pytest.raises(ValueError, match="no Linear/Conv"):
        layer_spectra(problem, top_k=3)                # … but is not a default layer
    with pytest.raises(ValueError, match="Kronecker factors need"):
        kronecker_alignment(problem, layers="W", top_k=3)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


def test_model_is_left_untouched(problems):
    problem = problems["cnn"]
    model = problem.model
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    kronecker_alignment(problem, layers=["conv2.weight", "head.weight"], top_k=3)
    assert _no_hooks(model)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert not model.training


def test_hooks_are_removed_after_an_error():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 3).double()
            self.unused = nn.Linear(4, 3).double()

        def forward(self, x):
            return self.used(x)

    model = Unused().eval()
    problem = Problem(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(-1),
                      torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="never called"):
        kronecker_factors(problem)
    assert _no_hooks(model)


# --------------------------------------------------------------------------- #
# TinyGPT smoke, results, figures
# --------------------------------------------------------------------------- #


def test_tiny_gpt_smoke(gpt_spectra):
    ds = gpt_spectra
    assert ds.sizes["layer"] == 7 and ds.sizes["rank"] == 8
    assert (ds.layer_group == "attention").sum() == 4
    assert np.isfinite(ds.singular_value.values).all() and np.isfinite(ds.h.values).all()
    assert (np.diff(ds.singular_value.values, axis=1) <= 0).all()
    assert int(ds.num_hvps.sum()) == ds.attrs["num_hvps_total"] == 56
    assert set(ds.best_model_bic.values) <= {"power_law", "exponential", "lognormal"}
    for var in ("singular_value", "h", "alpha", "bic"):
        assert ds[var].attrs["units"] and ds[var].attrs["long_name"]
    assert "sigma" not in ds.variables  # σ is the probe scale of the stabilization results


def test_netcdf_round_trip(tmp_path, problems, gpt_spectra, gpt_kron):
    """Attrs stay Python values in memory; results.save encodes them, results.load decodes them."""
    listed = layer_spectra(problems["mlp"], layers=["layers.0.weight", "layers.1.*"], top_k=2)
    assert listed.attrs["layers_requested"] == ["layers.0.weight", "layers.1.*"]
    assert gpt_spectra.attrs["layers_requested"] is None
    for i, ds in enumerate((gpt_spectra, gpt_kron, listed)):
        back = results.load(results.save(ds, tmp_path / f"s{i}.nc"))
        xr.testing.assert_identical(back, ds)
        assert back.attrs == ds.attrs
        assert back["singular_value"].attrs == ds["singular_value"].attrs


def test_figures(gpt_spectra):
    figs = [
        plots.plot_alpha_fits(gpt_spectra),
        plots.plot_spectral_transfer({"a": gpt_spectra, "b": gpt_spectra}),
        plots.plot_rank_profile_bic(gpt_spectra),
        plots.plot_alpha_by_layer_type([gpt_spectra]),
    ]
    assert all(isinstance(fig, Figure) for fig in figs)
    n_panels = sum(ax.get_visible() for ax in figs[0].axes)
    assert n_panels == gpt_spectra.sizes["layer"]
