"""Units and long names per estimator in a stabilization Dataset, from the one registry (issue #15).

``value`` mixes units (loss for Δ₁ and the sphere probe, loss^p for the
others), so each estimator's units and meaning are coordinates over
``estimator``, taken from :data:`curvprobe.criteria.spec.ESTIMATORS`.
"""

from __future__ import annotations

import pytest
import xarray as xr

from curvprobe import stabilization
from curvprobe.criteria import StabilizationSpec, iter_parts, merge_parts
from curvprobe.criteria.spec import ESTIMATORS
from curvprobe.results import load, save, without_volatile

from conftest import mlp_problem

NAMES = ["delta1", "sphere", "full_mc", "direct_mc", "gm"]


@pytest.mark.parametrize("p", [2, 3])
def test_units_and_long_names_follow_the_registry(p):
    names = [n for n in NAMES if p == 2 or not ESTIMATORS[n].p2_only]
    ds = stabilization(mlp_problem(n=12), [3, 6], sigmas=[1e-2], dims=[2], mc_samples=4, p=p,
                       estimators=names)
    assert list(ds["estimator"].values) == names
    units = dict(zip(names, ds["estimator_units"].values))
    assert units["delta1"] == units["sphere"] == "loss"  # |δ| estimators
    assert {units[n] for n in names if n not in ("delta1", "sphere")} == {f"loss^{p}"}
    assert list(ds["estimator_long_name"].values) == [ESTIMATORS[n].long_name for n in names]
    assert "estimator_long_name" in ds["value"].attrs["long_name"]
    assert "loss^2" not in ds["value"].attrs.get("units", "")


def test_long_names_survive_the_file_and_old_parts_still_merge(tmp_path):
    problem = mlp_problem(n=20)
    spec = StabilizationSpec(ks=(4, 8), sigmas=(1e-2,), dims=(1,), mc_samples=4,
                             estimators=("delta1", "full_mc", "direct_mc"))
    parts = [p.dataset for p in iter_parts(problem, spec)]
    merged = merge_parts(parts, spec.estimators)
    back = load(save(merged, tmp_path / "s.nc"))
    assert list(back["estimator_long_name"].values) == [ESTIMATORS[n].long_name for n in spec.estimators]
    old = [parts[0].drop_vars("estimator_long_name"), *parts[1:]]  # a part written before 0.2
    merged_old = merge_parts(old, spec.estimators)
    assert "estimator_long_name" not in merged_old.coords
    drop = ["stage_seconds", "stage", "estimator_long_name"]
    xr.testing.assert_identical(without_volatile(merged_old.drop_vars(drop, errors="ignore")),
                                without_volatile(merged.drop_vars(drop)))
