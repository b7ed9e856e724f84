"""Provenance attrs (issue #15): when, where and on which weights a measurement ran.

``created`` and ``host`` are the :data:`curvprobe.results.VOLATILE_ATTRS`: two
runs of one measurement differ in them, and :func:`without_volatile` drops
them (and only them) to compare results. ``weights_sha256`` identifies ``w*``.
"""

from __future__ import annotations

import datetime as dt
import platform

import numpy as np
import pytest
import torch
import xarray as xr

from curvprobe import quadratic_validity, results
from curvprobe.results import VOLATILE_ATTRS, provenance, weights_digest, without_volatile

from conftest import mlp_problem


def test_created_is_now_in_utc_and_host_is_this_machine():
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    attrs = provenance()
    after = dt.datetime.now(dt.UTC)
    assert attrs["created"].endswith("Z")
    created = dt.datetime.fromisoformat(attrs["created"].replace("Z", "+00:00"))
    assert before <= created <= after
    assert attrs["host"] == platform.node()
    assert set(VOLATILE_ATTRS) == {"created", "host"} and set(attrs) >= VOLATILE_ATTRS


def test_weights_digest_identifies_the_weights():
    problem = mlp_problem()
    attrs = provenance(problem)
    assert attrs["weights_sha256"] == weights_digest(problem.params)
    assert len(attrs["weights_sha256"]) == 64
    assert provenance(mlp_problem())["weights_sha256"] == attrs["weights_sha256"]  # same seed
    assert provenance(mlp_problem(seed=1))["weights_sha256"] != attrs["weights_sha256"]
    w = problem.params
    w[0] += 1e-12
    assert weights_digest(w) != attrs["weights_sha256"]  # one changed bit of one weight
    assert weights_digest(problem.params.float()) != attrs["weights_sha256"]  # dtype counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_weights_digest_is_the_sha256_of_the_bytes(dtype):
    import hashlib

    w = torch.linspace(-1, 1, 7, dtype=dtype)
    raw = w.view(torch.int16 if dtype == torch.bfloat16 else dtype).numpy().tobytes()
    assert weights_digest(w) == hashlib.sha256(raw).hexdigest()


def test_without_volatile_drops_only_the_volatile_attrs():
    ds = xr.Dataset({"x": ("i", np.arange(3.0), {"created": "kept on variables"})},
                    attrs=provenance(measurement="m"))
    stable = without_volatile(ds)
    assert set(ds.attrs) - set(stable.attrs) == VOLATILE_ATTRS
    assert stable["x"].attrs == {"created": "kept on variables"}
    assert "created" in ds.attrs  # the input is not modified


def test_two_runs_agree_up_to_the_volatile_attrs(tmp_path):
    problem = mlp_problem()
    first = quadratic_validity(problem, [1e-3, 1e-2], mc_samples=2, seed=0)
    second = quadratic_validity(problem, [1e-3, 1e-2], mc_samples=2, seed=0)
    second.attrs["created"] = "1999-01-01T00:00:00Z"  # as if run earlier on another machine
    second.attrs["host"] = "elsewhere"
    with pytest.raises(AssertionError):
        xr.testing.assert_identical(first, second)
    xr.testing.assert_identical(without_volatile(first), without_volatile(second))
    back = results.load(results.save(first, tmp_path / "v.nc"))
    assert back.attrs["created"] == first.attrs["created"]
    assert back.attrs["weights_sha256"] == weights_digest(problem.params)
