"""Result files are readable by everyone, like summary.md."""

from __future__ import annotations

import stat

import numpy as np
import xarray as xr

from curvprobe.results import atomic_write, load, provenance, save


def test_result_files_are_world_readable(tmp_path):
    ds = xr.Dataset({"x": ("i", np.arange(3.0))}, attrs=provenance())
    paths = [save(ds, tmp_path / "r.nc"), atomic_write(tmp_path / "t.md", lambda h: h.write("hi"), "w")]
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert float(load(paths[0])["x"].sum()) == 3.0
