"""Probe configuration: a TOML file and command-line flags → a validated :class:`ProbeConfig`.

A config is one flat TOML table; every key is also a command-line flag
(``sigmas`` ↔ ``--sigmas``, ``mc_samples`` ↔ ``--mc-samples``; lists are
comma-separated on the command line: ``--ks 10,20,40``). Flags override the
file, the file overrides the defaults. ``examples/probe.toml`` documents every
key; :data:`FIELDS` is the same list in code.

Relative input paths (``checkpoint``, ``data``, the path inside ``hf:`` and
``module:file.py:factory``) are resolved against the config file's directory
when they come from the file and against the working directory when they come
from a flag; ``out`` is always relative to the working directory. The
resolved config holds absolute paths.

Every problem is reported as a :class:`ConfigError` whose message is one line
naming the key and what it accepts — the command line prints it and exits
with status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curvprobe.criteria.spec import (
    DEFAULT_ESTIMATORS,
    ESTIMATORS,
    SUBSPACE_MODES,
    StabilizationSpec,
    default_estimators,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["FIELDS", "ConfigError", "Field", "ProbeConfig", "describe", "load_config", "parse_value",
           "toml_value"]

ESTIMATOR_NAMES = tuple(ESTIMATORS)
LOSSES = ("auto", "cross_entropy", "token_cross_entropy", "mse")
DTYPES = ("float32", "float64")
MODEL_KINDS = ("builtin", "module", "hf")
BUILTIN_MODELS = ("tiny-gpt", "mlp", "cnn")


class ConfigError(ValueError):
    """Bad configuration or bad input named by the configuration (one-line message)."""


@dataclass(frozen=True)
class Field:
    """One config key: its type, default and help text.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``int_list``,
    ``float_list``, ``str_list``; ``required`` keys have no default.
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    required: bool = False
    path: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag: ``--`` and the name with ``-`` for ``_``."""
        return "--" + self.name.replace("_", "-")


FIELDS: tuple[Field, ...] = (
    # model
    Field("model", "str", None, "builtin:<tiny-gpt|mlp|cnn>, module:<pkg.mod or file.py>:<factory>, "
          "or hf:<directory of a Hugging Face causal LM>", required=True),
    Field("checkpoint", "str", "", "state dict (.pt) loaded into the model with weights_only=True; "
          "empty: the built-in weights / the factory's / the hf directory's", path=True),
    Field("loss", "str", "auto", "per-sample loss of a module model", choices=LOSSES),
    # data
    Field("data", "str", "builtin", "'builtin', or a .pt/.npy file of token ids (n, T+1) or a .pt "
          "dict {'inputs', 'targets'}", path=True),
    Field("num_data", "int", 0, "ordered samples to use (the first num_data rows; 0: all rows of a "
          "file, max(ks)+1 for built-in data)"),
    Field("seq_len", "int", 32, "tokens per sequence of the built-in text corpus for module/hf "
          "language models"),
    # what to measure
    Field("ks", "int_list", None, "sample counts k (the criterion compares L_(k+1) with L_k)",
          required=True),
    Field("sigmas", "float_list", None, "probe scales σ > 0 (parameter units)", required=True),
    Field("dims", "int_list", (1, 4, 16), "subspace dimensions D"),
    Field("estimators", "str_list", DEFAULT_ESTIMATORS, "estimators to run (default: all but sphere; "
          "'all' for every one)", choices=ESTIMATOR_NAMES),
    Field("mc_samples", "int", 32, "Monte Carlo draws S per (σ, D)"),
    Field("p", "float", 2.0, "order p ≥ 1 of the criterion Δ_p (gm, cv_mc need p = 2)"),
    Field("subspace", "str", "per_k", "U_D from H^(k) for each k, one from H^(K) for all (fixed), or one "
          "from all K+1 samples for all k and orderings (pooled)", choices=SUBSPACE_MODES),
    Field("orderings", "int", 1, "orderings of the samples averaged over (1: the given order only; "
          "more needs subspace = \"pooled\"; the permutations are seeded by seed)"),
    Field("tol", "float", 1e-3, "eigensolver relative residual tolerance"),
    Field("max_hvps", "int", 0, "eigensolver budget of Hessian-vector products per k (0: default)"),
    Field("basis_size", "int", 0, "eigensolver Krylov basis bound m (0: the solver's max(3 D, D + 40)); "
          "memory ≈ m · N · itemsize"),
    Field("basis_dtype", "str", "float64", "storage of the Krylov basis (float32 halves its memory; "
          "Gram and Rayleigh–Ritz arithmetic and the certificate stay float64)",
          choices=("float64", "float32")),
    Field("guard_steps", "int", 40, "the most Lanczos steps of the eigensolver's missed-eigenvalue "
          "guard per run: with miss_bound it stops as soon as its bound reaches it (not certified if "
          "these run out first); with miss_bound = 0 it runs them all"),
    Field("miss_bound", "float", 0.05, "certify an eigenspace at this miss bound: the guard runs until "
          "the probability that it missed an eigenvalue is at most this (0: no bound, the guard's "
          "steps decide and the probability is reported, not certified)"),
    Field("validity", "bool", True, "run the quadratic-validity sweep at k = max(ks) and flag σ "
          "beyond the validated regime"),
    Field("validity_samples", "int", 16, "draws of the validity sweep"),
    Field("validity_threshold", "float", 0.1, "largest mean relative error of a validated σ"),
    # execution
    Field("seed", "int", 0, "seed of every random draw and of the eigensolver"),
    Field("dtype", "str", "float32", "dtype of parameters and losses", choices=DTYPES),
    Field("device", "str", "cpu", "torch device (cpu, cuda, cuda:1, mps)"),
    Field("batch_size", "int", 128, "samples per chunk (bounds memory)"),
    Field("point_batch", "int", 8, "perturbed points evaluated together"),
    Field("out", "str", "", "output directory (default runs/<timestamp>)", path=True),
)

FIELD_BY_NAME = {f.name: f for f in FIELDS}
#: Keys that do not change the numbers (ignored when ``--resume`` compares configs).
NON_NUMERIC_KEYS = ("out",)


def describe(field: Field) -> str:
    """What a key accepts, in words (for errors and the docs' key table)."""
    if field.choices and field.kind == "str_list":
        return f"a list of names from {', '.join(field.choices)} (or 'all')"
    if field.choices:
        return f"one of {', '.join(field.choices)}"
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "int_list": "a list of integers, e.g. [10, 20, 40] (flag: 10,20,40)",
        "float_list": "a list of numbers, e.g. [1e-3, 1e-2] (flag: 1e-3,1e-2)",
        "str_list": "a list of strings",
    }[field.kind]


def _bad(field: Field, value: Any, why: str = "") -> ConfigError:
    shown = repr(value) if not isinstance(value, str) else f"'{value}'"
    extra = f" ({why})" if why else ""
    return ConfigError(f"config key '{field.name}' must be {describe(field)}; got {shown}{extra}")


def _split(value: str) -> list[str]:
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip() for part in text.split(",") if part.strip()]


def _to_int(field: Field, value: Any, original: Any) -> int:
    if isinstance(value, bool):
        raise _bad(field, original)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                raise _bad(field, original) from None
            if f.is_integer():
                return int(f)
    raise _bad(field, original)


def _to_float(field: Field, value: Any, original: Any) -> float:
    if isinstance(value, bool):
        raise _bad(field, original)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise _bad(field, original) from None
    raise _bad(field, original)


def parse_value(name: str, value: Any) -> Any:
    """Convert a TOML value or a command-line string to the key's type and check it.

    Raises :class:`ConfigError` naming the key and the accepted values.
    """
    if name not in FIELD_BY_NAME:
        raise ConfigError(f"unknown config key '{name}'; accepted keys: {', '.join(FIELD_BY_NAME)}")
    field = FIELD_BY_NAME[name]
    kind = field.kind
    out: Any
    if kind.endswith("_list"):
        items = _split(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items] if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if items is None:
            raise _bad(field, value)
        if kind == "int_list":
            out = tuple(_to_int(field, v, value) for v in items)
        elif kind == "float_list":
            out = tuple(_to_float(field, v, value) for v in items)
        else:
            if not all(isinstance(v, str) for v in items):
                raise _bad(field, value)
            out = tuple(items)
        if not out:
            raise _bad(field, value, "empty")
    elif kind == "int":
        out = _to_int(field, value, value)
    elif kind == "float":
        out = _to_float(field, value, value)
    elif kind == "bool":
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            out = True
        elif isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            out = False
        else:
            raise _bad(field, value)
    else:
        if not isinstance(value, str):
            raise _bad(field, value)
        out = value.strip()
    return _check(field, out, value)


def _check(field: Field, value: Any, original: Any) -> Any:
    """Range and choice checks of one typed value."""
    name = field.name
    if field.choices and field.kind == "str" and value not in field.choices:
        raise _bad(field, original)
    if name == "estimators":
        if tuple(value) == ("all",):
            return ESTIMATOR_NAMES
        unknown = [v for v in value if v not in ESTIMATOR_NAMES]
        if unknown:
            raise ConfigError(f"unknown estimator '{unknown[0]}' in config key 'estimators'; valid: "
                              f"{', '.join(ESTIMATOR_NAMES)} (or 'all')")
        return tuple(dict.fromkeys(value))
    if name == "sigmas":
        bad = [s for s in value if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ConfigError(f"config key 'sigmas' must hold numbers > 0 (probe scales in parameter "
                              f"units); got {bad[0]:g}")
        if len(set(value)) != len(value):
            raise ConfigError(f"config key 'sigmas' has duplicates: {list(value)}")
        return tuple(sorted(value))
    if name == "ks":
        if min(value) < 1:
            raise ConfigError(f"config key 'ks' must hold integers >= 1; got {min(value)}")
        if len(set(value)) != len(value):
            raise ConfigError(f"config key 'ks' has duplicates: {list(value)}")
        return tuple(sorted(value))
    if name == "dims":
        if min(value) < 1:
            raise ConfigError(f"config key 'dims' must hold integers >= 1; got {min(value)}")
        return tuple(sorted(set(value)))
    positive_int = {"mc_samples": 2, "batch_size": 1, "point_batch": 1, "seq_len": 2, "orderings": 1,
                    "validity_samples": 2, "guard_steps": 1}
    if name in positive_int and value < positive_int[name]:
        raise ConfigError(f"config key '{name}' must be an integer >= {positive_int[name]}; got {value}")
    if name in ("num_data", "max_hvps", "basis_size") and value < 0:
        raise ConfigError(f"config key '{name}' must be an integer >= 0 (0: default); got {value}")
    if name in ("tol", "validity_threshold") and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"config key '{name}' must be a number > 0; got {value:g}")
    if name == "miss_bound" and not 0 <= value < 1:
        raise ConfigError(f"config key 'miss_bound' must lie in [0, 1) (0: report only); got {value:g}")
    if name == "p" and not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"config key 'p' must be a number >= 1; got {value:g}")
    if name == "model":
        _check_model_spec(value)
    if name == "device":
        _check_device(value)
    return value


def _check_model_spec(spec: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind not in MODEL_KINDS or not rest:
        raise ConfigError(f"config key 'model' must be builtin:<{'|'.join(BUILTIN_MODELS)}>, "
                          f"module:<pkg.mod or file.py>:<factory>, or hf:<directory>; got '{spec}'")
    if kind == "builtin" and rest not in BUILTIN_MODELS:
        raise ConfigError(f"config key 'model': unknown built-in model '{rest}'; valid: "
                          f"{', '.join('builtin:' + b for b in BUILTIN_MODELS)}")
    if kind == "module":
        target, sep, factory = rest.rpartition(":")
        if not sep or not target or not factory.isidentifier():
            raise ConfigError(f"config key 'model' must name a factory as module:<pkg.mod or file.py>:"
                              f"<function>, e.g. module:mypkg.models:make_model; got '{spec}'")


def _check_device(device: str) -> None:
    if not re.fullmatch(r"(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)", device):
        raise ConfigError(f"config key 'device' must be cpu, cuda, cuda:<n> or mps; got '{device}'")


def _resolve_path(value: str, base: Path) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_model_path(spec: str, base: Path) -> str:
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        return "hf:" + _resolve_path(rest, base)
    if kind == "module":
        target, _, factory = rest.rpartition(":")
        if target.endswith(".py") or "/" in target or os.sep in target:
            return f"module:{_resolve_path(target, base)}:{factory}"
    return spec


@dataclass(frozen=True)
class ProbeConfig:
    """A validated probe configuration (see :data:`FIELDS` and ``examples/probe.toml``).

    Construct it with :func:`load_config`; lists are tuples, paths absolute.
    """

    model: str
    ks: tuple[int, ...]
    sigmas: tuple[float, ...]
    checkpoint: str = ""
    loss: str = "auto"
    data: str = "builtin"
    num_data: int = 0
    seq_len: int = 32
    dims: tuple[int, ...] = (1, 4, 16)
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    mc_samples: int = 32
    p: float = 2.0
    subspace: str = "per_k"
    orderings: int = 1
    tol: float = 1e-3
    max_hvps: int = 0
    basis_size: int = 0
    basis_dtype: str = "float64"
    guard_steps: int = 40
    miss_bound: float = 0.05
    validity: bool = True
    validity_samples: int = 16
    validity_threshold: float = 0.1
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 128
    point_batch: int = 8
    out: str = ""

    # ----------------------------------------------------------------- views
    @property
    def model_kind(self) -> str:
        """``"builtin"``, ``"module"`` or ``"hf"``."""
        return self.model.partition(":")[0]

    @property
    def model_target(self) -> str:
        """What follows ``kind:`` in :attr:`model`."""
        return self.model.partition(":")[2]

    @property
    def max_k(self) -> int:
        """The largest sample count of ``ks``."""
        return max(self.ks)

    @property
    def torch_dtype(self):
        """:attr:`dtype` as a ``torch.dtype`` (``torch.float32`` or ``torch.float64``)."""
        import torch

        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]

    def as_dict(self) -> dict[str, Any]:
        """Plain ``{key: value}`` with lists for tuples (TOML/JSON-ready)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in FIELDS}

    def numeric_dict(self) -> dict[str, Any]:
        """:meth:`as_dict` without the keys that do not change the numbers."""
        return {k: v for k, v in self.as_dict().items() if k not in NON_NUMERIC_KEYS}

    def differences(self, other: ProbeConfig) -> list[tuple[str, Any, Any]]:
        """``(key, value here, value in other)`` for every numeric key that differs."""
        mine, theirs = self.numeric_dict(), other.numeric_dict()
        return [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]

    def spec(self) -> StabilizationSpec:
        """The measurement this config names, resumable part by part
        (:func:`curvprobe.app.runs.run_probe`)."""
        options: dict[str, Any] = {"guard_steps": self.guard_steps}
        if self.max_hvps:
            options["max_matvecs"] = self.max_hvps
        if self.basis_size:
            options["basis_size"] = self.basis_size
        if self.basis_dtype != "float64":
            import torch

            options["basis_dtype"] = getattr(torch, self.basis_dtype)
        if self.miss_bound:
            options["max_miss_probability"] = self.miss_bound
        return StabilizationSpec(ks=self.ks, sigmas=self.sigmas, dims=self.dims, estimators=self.estimators,
                                 mc_samples=self.mc_samples, p=self.p, subspace=self.subspace, seed=self.seed,
                                 tol=self.tol, point_batch=self.point_batch, eigen_options=options,
                                 resumable=True, orderings=self.orderings, ordering_seed=self.seed)

    def replace(self, **changes: Any) -> ProbeConfig:
        """A copy with ``changes`` applied (each value parsed and checked)."""
        return dataclasses.replace(self, **{k: parse_value(k, v) for k, v in changes.items()})

    # ------------------------------------------------------------------ TOML
    def to_toml(self, *, header: str = "") -> str:
        """The config as a TOML document (every key, in :data:`FIELDS` order)."""
        lines = [f"# {line}" for line in header.splitlines()] if header else []
        for key, value in self.as_dict().items():
            lines.append(f"{key} = {toml_value(value)}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike, *, header: str = "") -> Path:
        """Write :meth:`to_toml` (UTF-8) to ``path`` with :func:`curvprobe.results.atomic_write`."""
        from curvprobe.results import atomic_write

        text = self.to_toml(header=header).encode("utf-8")
        return atomic_write(path, lambda handle: handle.write(text))


def toml_value(value: Any) -> str:
    """A Python value (bool, int, float, str or list of them) as TOML source text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level table of a TOML file; :class:`ConfigError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    nested = [k for k, v in table.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"config file {path}: keys are flat (no [tables]); found table '[{nested[0]}]'")
    return table


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                *, required: Sequence[str] = ("model", "ks", "sigmas"),
                defaults: Mapping[str, Any] | None = None) -> ProbeConfig:
    """Build a :class:`ProbeConfig` from defaults, a TOML file and overrides.

    Parameters
    ----------
    path : str or PathLike, optional
        TOML file. Relative paths inside it are resolved against its
        directory.
    overrides : mapping, optional
        ``{key: value}`` from the command line (strings are parsed as the flag
        syntax: ``"10,20,40"``); ``None`` values are ignored. Relative paths
        are resolved against the working directory.
    required : sequence of str
        Keys that must be given (a missing one is a :class:`ConfigError` that
        names it). Keys not required and not given get placeholder values only
        where a later step fills them (``ks``/``sigmas`` of commands that do
        not use them).
    defaults : mapping, optional
        Replacement defaults (e.g. the demo's).

    Returns
    -------
    ProbeConfig
        The validated configuration.
    """
    values: dict[str, Any] = {}
    if defaults:
        for key, value in defaults.items():
            values[key] = parse_value(key, value)
    if path is not None:
        path = Path(path)
        table = read_toml(path)
        base = path.resolve().parent
        for key, value in table.items():
            # outputs go under the working directory; inputs are found beside the config
            values[key] = _resolve(key, parse_value(key, value), Path.cwd() if key == "out" else base)
    cwd = Path.cwd()
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _resolve(key, parse_value(key, value), cwd)
    if "model" not in values:
        raise ConfigError("config key 'model' is missing: it must be builtin:<name>, module:<...>:<factory> "
                          "or hf:<directory> (in the config file, or --model on the command line)")
    for key in required:
        if key not in values:
            field = FIELD_BY_NAME[key]
            raise ConfigError(f"config key '{key}' is missing: it must be {describe(field)} "
                              f"(in the config file, or {field.flag} on the command line)")
    if "estimators" not in values:  # the registry's default at the config's order p
        values["estimators"] = default_estimators(values.get("p", 2.0))
    values.setdefault("ks", (1,))
    values.setdefault("sigmas", (1e-3,))
    cfg = ProbeConfig(**values)
    _check_consistency(cfg)
    return cfg


def _resolve(key: str, value: Any, base: Path) -> Any:
    field = FIELD_BY_NAME[key]
    if field.path and value not in ("", "builtin"):
        return _resolve_path(value, base)
    if key == "model":
        return _resolve_model_path(value, base)
    return value


def _check_consistency(cfg: ProbeConfig) -> None:
    """Checks that involve more than one key."""
    if cfg.num_data and cfg.num_data < cfg.max_k + 1:
        raise ConfigError(f"k = {cfg.max_k} is larger than the data: the criterion compares L_(k+1) "
                          f"with L_k, so it needs {cfg.max_k + 1} samples, but num_data = {cfg.num_data}")
    try:
        cfg.spec()
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    if cfg.model_kind == "hf" and cfg.loss not in ("auto", "token_cross_entropy"):
        raise ConfigError(f"config key 'loss': a Hugging Face causal LM uses the next-token cross-entropy; "
                          f"set loss = \"auto\" (got '{cfg.loss}')")
