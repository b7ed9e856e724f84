"""The ``orderings`` config key and a probe run over orderings (parts on disk, merged)."""

from __future__ import annotations

import warnings

import pytest
import xarray as xr

from curvprobe import stabilization
from curvprobe.app.config import ConfigError, load_config, parse_value
from curvprobe.app.runs import run_probe
from curvprobe.zoo.builtin import builtin_problem


def test_orderings_key_reaches_the_spec():
    cfg = load_config(None, {"model": "builtin:mlp", "ks": "4,8", "sigmas": "0.01", "orderings": "16",
                             "subspace": "pooled", "seed": "3"})
    spec = cfg.spec()
    assert (spec.orderings, spec.ordering_seed, spec.subspace) == (16, 3, "pooled")
    assert load_config(None, {"model": "builtin:mlp", "ks": "4", "sigmas": "0.1"}).spec().orderings == 1
    with pytest.raises(ConfigError, match="pooled"):
        load_config(None, {"model": "builtin:mlp", "ks": "4,8", "sigmas": "0.01", "orderings": "4"})
    with pytest.raises(ConfigError, match=r"orderings.*>= 1"):
        parse_value("orderings", "0")


def test_probe_run_over_orderings_equals_the_api(tmp_path):
    problem = builtin_problem("mlp", num_samples=33, batch_size=16, progress=False)
    cfg = load_config(None, {"model": "builtin:mlp", "ks": "4,8,16,32", "sigmas": "0.01,0.1", "dims": "1,3",
                             "orderings": "8", "subspace": "pooled", "mc_samples": "8", "validity": "false",
                             "estimators": "delta1,full_mc,direct_mc,gm,cv_mc", "out": str(tmp_path / "run")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_probe(cfg, problem=problem)
        ref = stabilization(problem, [4, 8, 16, 32], sigmas=[0.01, 0.1], dims=[1, 3], mc_samples=8,
                            estimators=["delta1", "full_mc", "direct_mc", "gm", "cv_mc"], orderings=8,
                            eigen_kwargs={"guard_steps": 10})
    assert outcome.computed == ["fullspace", "subspace_pooled"]
    ds = outcome.dataset
    for name in ("value", "ordering_mean", "ordering_stderr", "captured_fraction", "permutation"):
        xr.testing.assert_allclose(ds[name], ref[name], rtol=1e-12)
