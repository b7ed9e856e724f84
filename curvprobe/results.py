"""Results as xarray Datasets: provenance attrs and netCDF save/load.

This module is the one owner of result files (see ``docs/concepts.md``):
:func:`provenance` builds the provenance attrs of every measurement (those
that differ between two runs of the same measurement are :data:`VOLATILE_ATTRS`,
dropped by :func:`without_volatile` to compare results),
:func:`encode`/:func:`decode` translate attrs to and from what netCDF can
hold, :func:`save`/:func:`load` write and read Datasets, and
:func:`atomic_write` is the one temporary-file-and-rename writer used for
every file the package writes (netCDF, TOML configs, JSON, tensors, figures).

Attribute encoding
    netCDF attributes hold only strings and numbers (and their 1-D arrays),
    and the scipy engine writes netCDF3, whose integers are 32-bit. Datasets
    therefore keep their attrs as plain Python values in memory, and
    :func:`save` stores every attr (of the Dataset and of each variable) that
    netCDF cannot hold verbatim as a JSON string tagged with the prefix
    ``"json:"``: a dict, list, tuple, bool or None; an int outside the int32
    range; and a string netCDF would alter (one starting with the prefix,
    containing NUL, or not encodable as UTF-8). :func:`load` decodes those
    and turns numpy scalars back into Python ``int``/``float``, so
    ``load(save(ds))`` is identical to ``ds`` (``xr.testing.assert_identical``).
    JSON has one sequence type: a tuple attr reloads as a list.

Atomic writes
    A file is written to a temporary file in its target directory, flushed to
    disk and renamed over the target, so an interrupted write never leaves a
    half-written file, never clobbers a good one and leaves no temporary file
    behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
import xarray as xr

from curvprobe._version import __version__

__all__ = ["JSON_PREFIX", "VOLATILE_ATTRS", "atomic_write", "decode", "encode", "load", "provenance",
           "save", "weights_digest", "without_volatile"]

JSON_PREFIX = "json:"
"""Prefix of an attr that :func:`encode` stored as JSON."""

_INT32 = np.iinfo(np.int32)

VOLATILE_ATTRS = frozenset({"created", "host"})
"""Provenance attrs that differ between two runs of the same measurement (when and where it
ran): a resumed, merged or data-parallel result equals a fresh one up to these and the
timings."""

RESULT_FILE_MODE = 0o644
"""Permissions of every file :func:`atomic_write` writes (owner read-write, others read)."""


def provenance(problem=None, **extra: Any) -> dict[str, Any]:
    """Provenance attrs of a measurement.

    Parameters
    ----------
    problem : Problem, optional
        Adds its model class, ``num_params``, ``num_samples_available``,
        dtype, device and batch size.
    **extra
        Further attrs, added last (they override the defaults).

    Returns
    -------
    dict
        ``created`` (ISO 8601 UTC time, to the second) and ``host`` (network
        name of the machine) — the :data:`VOLATILE_ATTRS` —, curvprobe,
        torch, numpy, xarray and Python versions, the torch thread count, the
        problem's description with ``weights_sha256`` (:func:`weights_digest`
        of ``w*``) and ``extra``, as Python values (:func:`save` encodes them).
    """
    attrs: dict[str, Any] = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "host": platform.node(),
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
            "weights_sha256": weights_digest(problem.params),
        })
    attrs.update(extra)
    return attrs


def weights_digest(params: torch.Tensor) -> str:
    """SHA-256 (hex) of a parameter vector's bytes, in its dtype: which weights were measured.

    Parameters
    ----------
    params : Tensor
        Flat parameter vector ``w*`` (N,), any dtype and device.
    """
    raw = params.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    return hashlib.sha256(raw.tobytes()).hexdigest()


def without_volatile(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy of ``ds`` without the :data:`VOLATILE_ATTRS`, to compare two results."""
    out = ds.copy()
    out.attrs = {k: v for k, v in ds.attrs.items() if k not in VOLATILE_ATTRS}
    return out


# --------------------------------------------------------------------------- #
# attribute encoding
# --------------------------------------------------------------------------- #


def _as_json(value: Any) -> str:
    return JSON_PREFIX + json.dumps(value, sort_keys=True, default=_json_default)


def _storable_str(value: str) -> bool:
    """netCDF keeps ``value`` verbatim and :func:`decode` leaves it alone."""
    if value.startswith(JSON_PREFIX) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encode_attr(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return _as_json(bool(value))
    if value is None or isinstance(value, (dict, list, tuple)):
        return _as_json(value)
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return value if _INT32.min <= value <= _INT32.max else _as_json(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str) and not _storable_str(value):
        return _as_json(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"attr value of type {type(value).__name__} is not JSON-serialisable")


def _decode_attr(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(JSON_PREFIX):
        return json.loads(value[len(JSON_PREFIX):])
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _map_attrs(ds: xr.Dataset, fn: Callable[[Any], Any]) -> xr.Dataset:
    """A shallow copy of ``ds`` with ``fn`` applied to every attr value (of the
    Dataset and of each variable); ``ds`` itself is not modified."""
    ds = ds.copy()
    ds.attrs = {k: fn(v) for k, v in ds.attrs.items()}
    for variable in ds.variables.values():
        variable.attrs = {k: fn(v) for k, v in variable.attrs.items()}
    return ds


def encode(ds: xr.Dataset) -> xr.Dataset:
    """A copy of ``ds`` whose attrs netCDF can hold (see the module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        Attrs as Python values (str, int, float, bool, None, list, tuple,
        dict, nested; numpy scalars and arrays).

    Returns
    -------
    xarray.Dataset
        A shallow copy; ``ds`` is not modified.
    """
    return _map_attrs(ds, _encode_attr)


def decode(ds: xr.Dataset) -> xr.Dataset:
    """Inverse of :func:`encode` (a shallow copy; ``ds`` is not modified)."""
    return _map_attrs(ds, _decode_attr)


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str = "wb") -> Path:
    """Write a file atomically.

    ``write(handle)`` fills a temporary file in the target directory (created
    if missing); the file is flushed to disk, made readable by everyone (mode
    0644, like any file the user writes) and renamed over ``path``. If
    ``write`` raises (or the process is interrupted), ``path`` is left as it
    was and the temporary file is removed.

    Parameters
    ----------
    path : path-like
        Target file.
    write : callable
        Called once with the open temporary file.
    mode : {"wb", "w"}
        Mode of the handle ("w": text in the locale's encoding; prefer bytes
        for non-ASCII text).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, RESULT_FILE_MODE)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to netCDF at ``path`` atomically (:func:`atomic_write`).

    Attrs are encoded by :func:`encode` (``ds`` is not modified); the file is
    netCDF3, written with the scipy engine (no extra dependency).

    Parameters
    ----------
    ds : xarray.Dataset
        The result.
    path : path-like
        Target file; its directory is created if missing.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    encoded = encode(ds)
    # the handle is the io.BufferedWriter of os.fdopen(fd, "wb"): an io.IOBase, which
    # xarray's to_netcdf accepts; typeshed's IO protocol is not one
    return atomic_write(path, lambda handle: encoded.to_netcdf(cast(io.IOBase, handle), engine="scipy"))


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read a Dataset written by :func:`save` (fully loaded, file closed, attrs decoded)."""
    with xr.open_dataset(path, engine="scipy") as ds:
        return decode(ds.load())
