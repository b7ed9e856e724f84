"""layer_eigenvalues against the dense block Hessians: every layer of a small
built-in transformer, the dense path for small groups, the other ends and the
Gauss–Newton blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import curvprobe
from curvprobe.spectral.eigenvalues import layer_eigenvalues, layer_groups

from conftest import dense_hessian, gpt_problem, mlp_problem


def dense_block(problem, names: str, H: torch.Tensor) -> np.ndarray:
    slices = problem.layer_slices()
    idx = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names.split(",")])
    return H[idx][:, idx].numpy()


def test_every_layer_of_the_transformer_matches_its_dense_block():
    """The issue's check: top-4 of every layer of TinyGPT (small config) vs the
    dense block Hessians, ≤ 1e-8 relative, certified."""
    problem = gpt_problem()
    H = dense_hessian(problem)
    ds = curvprobe.layer_eigenvalues(problem, 4, tol=1e-9)
    assert list(ds["layer"].values) == ["wte", "blocks.0.attn.c_q", "blocks.0.attn.c_k", "blocks.0.attn.c_v",
                                         "blocks.0.attn.c_proj", "blocks.0.mlp.c_fc", "blocks.0.mlp.c_proj",
                                         "lm_head"]
    assert ds["eigenvalue"].dims == ("layer", "rank") and list(ds["rank"].values) == [1, 2, 3, 4]
    assert bool(ds["converged"].all())
    for layer in ds["layer"].values:
        row = ds.sel(layer=layer)
        lam = np.linalg.eigvalsh(dense_block(problem, str(row["parameters"].values), H))[::-1][:4]
        assert int(row["num_params"]) == dense_block(problem, str(row["parameters"].values), H).shape[0]
        assert np.abs(row["eigenvalue"].values - lam).max() <= 1e-8 * abs(lam[0])
        assert float(row["miss_probability"]) < 1
    assert ds.attrs["which"] == "largest" and ds.attrs["k"] == problem.num_samples


def test_small_groups_are_solved_densely_and_pad_their_ranks():
    problem = mlp_problem()
    H = dense_hessian(problem)
    ds = layer_eigenvalues(problem, 5, layers="parameters", which="smallest")
    bias = ds.sel(layer="layers.1.bias")  # 3 parameters: ranks 4, 5 are NaN
    assert str(bias["method"].values) == "dense" and int(bias["num_params"]) == 3
    lam = np.linalg.eigvalsh(dense_block(problem, "layers.1.bias", H))
    assert np.allclose(bias["eigenvalue"].values[:3], lam, atol=1e-12)
    assert np.isnan(bias["eigenvalue"].values[3:]).all() and not bias["converged"].values[3:].any()
    assert float(bias["miss_probability"]) == 0.0
    for layer in ds["layer"].values:
        row = ds.sel(layer=layer)
        lam = np.linalg.eigvalsh(dense_block(problem, str(row["parameters"].values), H))
        m = min(5, lam.size)
        assert np.allclose(row["eigenvalue"].values[:m], lam[:m], atol=1e-10)  # increasing for "smallest"


def test_groups_by_pattern_mapping_and_ggn():
    problem = gpt_problem()
    groups = layer_groups(problem, {"attention": "blocks.0.attn.*", "head": problem.model.lm_head})
    assert list(groups) == ["attention", "head"]
    ds = layer_eigenvalues(problem, 3, layers=groups, operator="ggn", tol=1e-8, method="block")
    G = problem.ggn_operator()
    dense = G.matmat(torch.eye(problem.num_params, dtype=torch.float64))
    for layer in ("attention", "head"):
        row = ds.sel(layer=layer)
        lam = np.linalg.eigvalsh(dense_block(problem, str(row["parameters"].values), dense))[::-1][:3]
        assert np.abs(row["eigenvalue"].values - lam).max() <= 1e-7 * abs(lam[0])
        assert str(row["method"].values) == "block"
    assert ds.attrs["operator"] == "ggn"
    assert list(layer_groups(problem, ["wte.*", "lm_head.weight"])) == ["wte.*", "lm_head.weight"]


def test_bad_arguments():
    problem = mlp_problem()
    with pytest.raises(ValueError, match="operator"):
        layer_eigenvalues(problem, 2, operator="fisher")
    with pytest.raises(ValueError, match="D must"):
        layer_eigenvalues(problem, 0)
    with pytest.raises(ValueError, match="no trainable parameter"):
        layer_eigenvalues(problem, 2, layers=["missing.*"])
