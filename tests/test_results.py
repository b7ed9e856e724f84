"""curvprobe.results: attr encoding round trips, atomic writes, provenance.

- ``load(save(ds))`` is identical to ``ds`` for attr values of every type the
  package stores (str, int, float, bool, None, list, dict, nested), on the
  Dataset, on a data variable and on a coordinate — checked with
  ``xr.testing.assert_identical`` and, stricter, value by value with types;
- an interrupted write (the writer raises, or the process is interrupted)
  leaves an existing file untouched and no temporary file behind, for
  :func:`atomic_write`, :func:`save` and ``ProbeConfig.write``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given
from hypothesis import strategies as st

from curvprobe import results
from curvprobe.app.config import ProbeConfig, read_toml

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

# attr names never interpreted by the CF decoding of netCDF readers ("units",
# "_FillValue", "scale_factor", "coordinates", ... all lack the prefix)
keys = st.from_regex(r"a_[a-z0-9_]{0,10}", fullmatch=True)

finite_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False),  # ±inf included; NaN != NaN inside containers
    st.booleans(),
    st.none(),
)
nested = st.recursive(
    finite_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=4),
    max_leaves=12,
)
attr_values = st.one_of(st.floats(), nested)  # top level: NaN too
attr_dicts = st.dictionaries(keys, attr_values, max_size=6)


def same(a, b) -> bool:
    """Equal value and type, recursively; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def dataset(ds_attrs: dict, var_attrs: dict, coord_attrs: dict) -> xr.Dataset:
    return xr.Dataset(
        {"v": ("x", np.array([1.0, np.nan, 3.0]), var_attrs),
         "s": ("x", np.array(["a", "bb", "σ"]))},
        coords={"x": ("x", np.arange(3, dtype=np.int64), coord_attrs)},
        attrs=ds_attrs,
    )


def assert_round_trip(ds: xr.Dataset, path: Path) -> xr.Dataset:
    before = {name: dict(ds[name].attrs) for name in ds.variables} | {None: dict(ds.attrs)}
    back = results.load(results.save(ds, path, overwrite=True))
    xr.testing.assert_identical(back, ds)
    for name, attrs in before.items():
        mine = ds.attrs if name is None else ds[name].attrs
        theirs = back.attrs if name is None else back[name].attrs
        assert same(dict(mine), attrs), "save modified the Dataset's attrs"
        assert same(dict(theirs), attrs), (name, theirs, attrs)
    return back


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


# --------------------------------------------------------------------------- #
# attr round trips
# --------------------------------------------------------------------------- #


@given(ds_attrs=attr_dicts, var_attrs=attr_dicts, coord_attrs=attr_dicts)
@example(
    ds_attrs={"a_str": "plain", "a_empty": "", "a_unicode": "σ ≤ 10⁻² — ü 日本", "a_int": 7,
              "a_float": 0.1, "a_nan": math.nan, "a_inf": -math.inf, "a_true": True, "a_false": False,
              "a_none": None, "a_list": ["x", 1, 2.5, None, True], "a_empty_list": [],
              "a_dict": {"loss": "auto", "ks": [1, 2, 4], "nested": {"deep": [{"x": None}]}},
              "a_empty_dict": {}},
    var_attrs={"a_long_name": "singular value", "a_big": 2**40, "a_small": -(2**31) - 1,
               "a_int32_max": 2**31 - 1, "a_int32_min": -(2**31)},
    coord_attrs={"a_prefixed": "json:not json", "a_prefixed_json": "json:[1, 2]",
                 "a_nul": "a\x00b", "a_trailing_nul": "ab\x00", "a_surrogate": "\ud800",
                 "a_spaces": "  ", "a_zero": -0.0},
)
def test_attrs_round_trip(folder, ds_attrs, var_attrs, coord_attrs):
    assert_round_trip(dataset(ds_attrs, var_attrs, coord_attrs), folder / "attrs.nc")


def test_numpy_scalars_reload_as_python_values(tmp_path):
    ds = dataset({"a_i": np.int64(3), "a_f": np.float32(0.5), "a_b": np.bool_(True),
                  "a_list": [np.int64(1), np.float64(2.0)], "a_array": np.arange(3.0)}, {}, {})
    back = results.load(results.save(ds, tmp_path / "np.nc"))
    xr.testing.assert_identical(back, ds)
    assert same(back.attrs["a_i"], 3) and same(back.attrs["a_f"], 0.5)
    assert back.attrs["a_b"] is True and same(back.attrs["a_list"], [1, 2.0])
    np.testing.assert_array_equal(back.attrs["a_array"], np.arange(3.0))


def test_tuple_attrs_reload_as_lists(tmp_path):
    """JSON has one sequence type: equal under assert_identical, a list after loading."""
    ds = dataset({"a_t": (1, "x", (2, 3))}, {}, {})
    back = results.load(results.save(ds, tmp_path / "t.nc"))
    xr.testing.assert_identical(back, ds)
    assert back.attrs["a_t"] == [1, "x", [2, 3]]


def test_encoded_file_holds_only_netcdf_types(tmp_path):
    """What reaches the file is str/int32/float (readable by any netCDF reader)."""
    ds = dataset({"a_d": {"x": 1}, "a_none": None, "a_big": 2**40, "a_s": "s"}, {"a_b": False}, {})
    path = results.save(ds, tmp_path / "raw.nc")
    raw = xr.load_dataset(path, engine="scipy")
    assert raw.attrs["a_d"] == 'json:{"x": 1}' and raw.attrs["a_none"] == "json:null"
    assert raw.attrs["a_big"] == "json:1099511627776" and raw.attrs["a_s"] == "s"
    assert raw["v"].attrs["a_b"] == "json:false"


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "r.nc"
    results.save(dataset({"a": 1}, {}, {}), path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        results.save(dataset({"a": 2}, {}, {}), path)
    assert results.load(path).attrs["a"] == 1
    results.save(dataset({"a": 2}, {}, {}), path, overwrite=True)
    assert results.load(path).attrs["a"] == 2


# --------------------------------------------------------------------------- #
# interrupted writes
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_atomic_write_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "sub" / "file.bin"
    results.atomic_write(path, lambda h: h.write(b"good"))

    def broken(handle):
        handle.write(b"half-writ")
        raise error("interrupted")

    with pytest.raises(error):
        results.atomic_write(path, broken)
    assert path.read_bytes() == b"good"
    assert os.listdir(path.parent) == ["file.bin"]
    with pytest.raises(error):  # no file before: none after
        results.atomic_write(tmp_path / "sub" / "new.bin", broken)
    assert os.listdir(path.parent) == ["file.bin"]


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.nc"
    good = dataset({"a_run": "good"}, {}, {})
    results.save(good, path)

    def broken(self, target, *args, **kwargs):
        target.write(b"CDF\x02 half a header")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        results.save(dataset({"a_run": "new"}, {}, {}), path, overwrite=True)
    monkeypatch.undo()
    xr.testing.assert_identical(results.load(path), good)
    assert os.listdir(tmp_path) == ["r.nc"]


def test_interrupted_config_write_keeps_the_old_file(tmp_path, monkeypatch):
    """ProbeConfig.write goes through results.atomic_write."""
    path = tmp_path / "probe.toml"
    config = ProbeConfig(model="builtin:mlp", ks=(4, 8), sigmas=(0.01,))
    config.write(path, header="first — σ in parameter units")
    before = path.read_bytes()
    assert before.decode("utf-8").startswith("# first — σ") and read_toml(path)["ks"] == [4, 8]

    def fail(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(results.os, "fsync", fail)
    with pytest.raises(OSError, match="fsync failed"):
        config.replace(seed=config.seed + 1).write(path, header="second")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["probe.toml"]


# --------------------------------------------------------------------------- #
# provenance
# --------------------------------------------------------------------------- #


def test_provenance(small_problems):
    problem = small_problems["mlp"]
    attrs = results.provenance(problem, measurement="m", num_samples=5)
    assert attrs["model"] == type(problem.model).__name__ and attrs["num_params"] == problem.num_params
    assert attrs["measurement"] == "m" and attrs["num_samples"] == 5
    assert {"curvprobe_version", "torch_version", "numpy_version", "python_version"} <= set(attrs)
    assert "model" not in results.provenance()
