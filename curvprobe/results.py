"""Results as xarray Datasets: provenance attrs and netCDF save/load (DESIGN.md §6).

netCDF attributes can hold only strings and numbers (and their 1-D arrays), so
:func:`save` stores an attr that is a dict, list, bool or None as a JSON
string tagged with the prefix ``"json:"``; :func:`load` decodes it, so a saved
Dataset reloads equal (``xr.testing.assert_identical``). Files are written with
the scipy engine (no extra dependency) to a temporary file in the target
directory and renamed into place, so an interrupted save never leaves a
half-written file and never clobbers a good one.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

JSON_PREFIX = "json:"


def provenance(problem=None, **extra: Any) -> dict[str, Any]:
    """Provenance attrs: curvprobe/torch/numpy versions, host, and for a
    Problem its model class, N, sample count, dtype and device."""
    from curvprobe import __version__

    attrs: dict[str, Any] = {
        "curvprobe_version": __version__,
        "torch_version": str(torch.__version__),
        "numpy_version": np.__version__,
        "xarray_version": xr.__version__,
        "python_version": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    if problem is not None:
        attrs.update({
            "model": type(problem.model).__name__,
            "num_params": problem.num_params,
            "num_samples_available": problem.num_samples,
            "dtype": str(problem.dtype).replace("torch.", ""),
            "device": str(problem.device),
            "batch_size": problem.batch_size,
        })
    attrs.update(extra)
    return attrs


def _encode_attr(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (dict, list, tuple)):
        return JSON_PREFIX + json.dumps(value, sort_keys=True, default=_json_default)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"attr value of type {type(value).__name__} is not JSON-serialisable")


def _decode_attr(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(JSON_PREFIX):
        out = json.loads(value[len(JSON_PREFIX):])
        return tuple(out) if isinstance(out, list) else out
    return value


def _map_attrs(ds: xr.Dataset, fn) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = {k: fn(v) for k, v in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {k: fn(v) for k, v in ds[name].attrs.items()}
    return ds


def encode(ds: xr.Dataset) -> xr.Dataset:
    """A copy of ``ds`` whose attrs netCDF can hold (see module docstring)."""
    return _map_attrs(ds, _encode_attr)


def decode(ds: xr.Dataset) -> xr.Dataset:
    """Inverse of :func:`encode`."""
    return _map_attrs(ds, _decode_attr)


def atomic_write(path: str | os.PathLike, write, mode: str = "wb") -> Path:
    """Write a file atomically: ``write(handle)`` fills a temporary file in
    the target directory, which then replaces ``path`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to netCDF at ``path`` atomically.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        encode(ds).to_netcdf(tmp, engine="scipy")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read a Dataset written by :func:`save` (fully loaded, file closed)."""
    with xr.open_dataset(path, engine="scipy") as ds:
        return decode(ds.load())
