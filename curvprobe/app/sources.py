"""Model and data sources named by a :class:`~curvprobe.app.config.ProbeConfig` → a :class:`Problem`.

Models
    ``builtin:<name>`` — a cached reference model (:func:`curvprobe.zoo.models.pretrained`);
    ``module:<pkg.mod>:<factory>`` or ``module:<file.py>:<factory>`` — ``factory()``
    returns an ``nn.Module``; ``hf:<directory>`` — a Hugging Face causal LM, read
    offline (``local_files_only``; from ``config.json`` alone, randomly
    initialised, when the directory has no weights) with ``attn_implementation="eager"``.
    A ``checkpoint`` (a state dict, also the ``{"state_dict": ...}`` /
    ``{"model": ...}`` layouts of training checkpoints) is loaded with
    ``torch.load(..., weights_only=True)`` and ``load_state_dict(strict=True)``.

Data
    ``builtin``: the built-in model's held-out probe samples, or windows of the
    standard-library byte corpus (``seq_len + 1`` tokens each) for a module or
    Hugging Face language model; a ``.npy``/``.pt`` file of token ids
    ``(n, T+1)`` (inputs are the first T tokens, targets the last T); or a
    ``.pt`` dict ``{"inputs", "targets"}`` (optionally ``"attention_mask"``
    for ``hf:`` models). Rows are samples in the order that defines k; the
    first ``num_data`` are used.

Everything wrong with the input is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curvprobe.app.config import ConfigError, ProbeConfig
from curvprobe.core.problem import Problem
from curvprobe.core.samples import TokenRows
from curvprobe.zoo import data, models
from curvprobe.zoo.adapters import causal_lm
from curvprobe.zoo.builtin import builtin_data

__all__ = [
    "LoadedSource",
    "build_problem",
    "file_digest",
    "load_checkpoint",
    "load_data",
    "load_model",
    "mse_loss",
]

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")


@dataclass
class LoadedSource:
    """A built problem and what it was built from (for provenance)."""

    problem: Problem
    model_name: str
    loss_name: str
    data_description: str
    digests: dict[str, str]


def _load_weights_only(path: Path, refusal: str) -> object:
    """``torch.load(path, weights_only=True)`` on CPU; a failure becomes a
    :class:`ConfigError` ``"<refusal> (torch.load ... failed: <reason>)"``, or ``"<refusal>
    (... not written by torch.save ...)"`` when the file does not start like one."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise ConfigError(f"{refusal} (the file was not written by torch.save: it is neither a zip "
                          "archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{refusal} (torch.load with weights_only=True failed: "
                          f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mse_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean squared error ``mean over non-batch dims of (f(x) − y)²``: (B,)."""
    diff = outputs - targets.to(outputs.dtype).reshape(outputs.shape)
    return (diff * diff).reshape(diff.shape[0], -1).mean(dim=1)


# --------------------------------------------------------------------- models
def _import_factory(target: str) -> Callable[[], nn.Module]:
    module_name, _, factory_name = target.rpartition(":")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"config key 'model': module file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"_curvprobe_user_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"config key 'model': {path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(f"config key 'model': importing {path} failed: {_first_line(exc)}") from exc
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(f"config key 'model': cannot import module '{module_name}': "
                              f"{_first_line(exc)}") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(f"config key 'model': module '{module_name}' has no callable '{factory_name}'")
    return factory


def load_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from ``path`` (``torch.load(..., weights_only=True)``).

    Accepts a bare state dict or a training checkpoint holding one under
    ``state_dict``/``model_state_dict``/``model``; strips a ``module.``
    (DataParallel) or ``_orig_mod.`` (torch.compile) prefix shared by all keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    obj = _load_weights_only(path, f"checkpoint {path} is not a PyTorch checkpoint")
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict) and not isinstance(obj.get(key), Tensor):
                inner = obj[key]
                if inner and all(isinstance(v, Tensor) for v in inner.values()):
                    obj = inner
                    break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, Tensor)
                                                  for k, v in obj.items())):
        raise ConfigError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict "
                          "(a mapping of parameter names to tensors)")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def apply_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load the state dict at ``path`` into ``model`` (strict); a mismatch is a
    :class:`ConfigError` naming the first missing/unexpected/mis-shaped entries."""
    state = load_checkpoint(path)
    own = model.state_dict()
    # tied weights (an LM head sharing the embedding) may be saved once: a key whose
    # tensor aliases one the checkpoint provides is not missing
    present = {own[k].data_ptr() for k in own if k in state and own[k].numel()}
    tied = {k for k in own if k not in state and own[k].numel() and own[k].data_ptr() in present}
    missing = [k for k in own if k not in state and k not in tied]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape mismatch {'; '.join(shapes[:2])}{' ...' if len(shapes) > 2 else ''}")
        raise ConfigError(f"checkpoint {path} does not match the model ({type(model).__name__}): "
                          + "; ".join(parts))
    try:
        model.load_state_dict(state, strict=not tied)
    except Exception as exc:
        raise ConfigError(f"checkpoint {path} does not match the model: {_first_line(exc)}") from None


def _load_hf(directory: str, dtype: torch.dtype, progress: bool = False) -> nn.Module:
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ConfigError(f"config key 'model': {path} is not a Hugging Face model directory "
                          "(no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ConfigError("hf: models need the transformers package (pip install 'curvprobe[hf]')") from None
    if not progress:  # no loading bars or config chatter off a terminal / with --quiet
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    model: nn.Module  # as torch types it: transformers types its decorated .to() wrongly
    try:
        if any((path / name).is_file() for name in _HF_WEIGHTS):
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                         attn_implementation="eager")
        else:
            warnings.warn(f"{path} holds no weights: probing a randomly initialised model "
                          "built from config.json", stacklevel=2)
            hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
            model.eval()  # built here from a config, not the user's object: from_pretrained does the same
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot load the Hugging Face model in {path}: {_first_line(exc)}") from None
    return model.to(dtype)


def load_model(config: ProbeConfig, *, progress: bool = False) -> tuple[nn.Module, Any]:
    """The model named by ``config`` with its checkpoint applied: ``(model, builtin config or None)``."""
    kind, target = config.model_kind, config.model_target
    builtin_cfg = None
    if kind == "builtin":
        model, builtin_cfg = models.pretrained(target, progress=progress)
    elif kind == "module":
        factory = _import_factory(target)
        try:
            model = factory()
        except Exception as exc:
            raise ConfigError(f"config key 'model': calling {target}() failed: {_first_line(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(f"config key 'model': {target}() returned a {type(model).__name__}, "
                              "not a torch.nn.Module")
    else:
        model = _load_hf(target, config.torch_dtype, progress)
    if config.checkpoint:
        apply_checkpoint(model, config.checkpoint)
    return model, builtin_cfg


# ----------------------------------------------------------------------- data
def _as_long_ids(x: Any, path: Path) -> Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"data file {path}: token ids must be integers, got dtype {t.dtype}")
    if t.dim() != 2 or t.shape[1] < 2:
        raise ConfigError(f"data file {path}: token ids must have shape (n, T+1) with T >= 1, "
                          f"got {tuple(t.shape)}")
    if int(t.min()) < 0:
        raise ConfigError(f"data file {path}: token ids must be >= 0")
    return t.long()


def load_data(config: ProbeConfig) -> dict[str, Any]:
    """The data file's contents: ``{"ids": (n, T+1)}`` (a memory-mapped :class:`TokenRows` for
    ``.npy``, a tensor for ``.pt``) or ``{"inputs", "targets"[, "attention_mask"]}``."""
    path = Path(config.data)
    if not path.is_file():
        raise ConfigError(f"config key 'data': file {path} does not exist (use 'builtin' or a .pt/.npy file)")
    if path.suffix == ".npy":  # memory-mapped: rows are read one chunk at a time
        try:
            rows = TokenRows(np.load(path, mmap_mode="r", allow_pickle=False))
        except ValueError as exc:
            raise ConfigError(f"data file {path}: {_first_line(exc)}") from None
        except Exception as exc:
            raise ConfigError(f"data file {path} is not a .npy array: {_first_line(exc)}") from None
        if len(rows) and rows.min_max()[0] < 0:
            raise ConfigError(f"data file {path}: token ids must be >= 0")
        return {"ids": rows}
    if path.suffix != ".pt":
        raise ConfigError(f"config key 'data': {path} must end in .pt or .npy")
    obj = _load_weights_only(path, f"data file {path} is not a torch tensor file")
    if isinstance(obj, Tensor):
        return {"ids": _as_long_ids(obj, path)}
    if isinstance(obj, dict) and {"inputs", "targets"} <= set(obj):
        out = {}
        for key in ("inputs", "targets", "attention_mask"):
            if key in obj:
                if not isinstance(obj[key], Tensor):
                    raise ConfigError(f"data file {path}: '{key}' must be a tensor, "
                                      f"got {type(obj[key]).__name__}")
                out[key] = obj[key]
        if out["inputs"].shape[0] != out["targets"].shape[0]:
            raise ConfigError(f"data file {path}: inputs and targets disagree on the number of samples "
                              f"({out['inputs'].shape[0]} vs {out['targets'].shape[0]})")
        return out
    raise ConfigError(f"data file {path} must hold a tensor of token ids (n, T+1) or a dict with "
                      f"'inputs' and 'targets'; got {type(obj).__name__}")


def _take(t: Tensor | TokenRows, n: int) -> Tensor | TokenRows:
    return t.head(n) if isinstance(t, TokenRows) else t[:n].contiguous()


def _num_rows(config: ProbeConfig, available: int) -> int:
    need = config.max_k + 1
    n = config.num_data or available
    if n > available:
        raise ConfigError(f"config key 'num_data' = {n} but the data has only {available} samples")
    if n < need:
        raise ConfigError(f"k = {config.max_k} is larger than the data: the criterion compares L_(k+1) "
                          f"with L_k, so it needs {need} samples, but the data has {n}")
    return n


def _builtin_lm_ids(config: ProbeConfig, n: int) -> Tensor:
    inputs, targets = data.token_sequences(n, config.seq_len, split="probe")
    return torch.cat([inputs, targets[:, -1:]], dim=1)


@dataclass
class _Samples:
    """The sample tensors a problem is built on, described, and the loss their
    layout implies (``config.loss = "auto"``)."""

    tensors: dict[str, Any]
    description: str
    default_loss: str


def build_problem(config: ProbeConfig, *, progress: bool = False, check_ks: bool = True,
                  distributed: bool = False) -> LoadedSource:
    """Model + data + loss of ``config`` as a :class:`Problem` (float dtype and
    device of the config), after checking that ``max(ks) + 1`` samples exist
    and that the model evaluates the first sample; ``distributed``: data
    parallel over the running ``torch.distributed`` process group."""
    model, builtin_cfg = load_model(config, progress=progress)
    device = config.device
    if device != "cpu" and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' = {device} but CUDA is not available (torch "
                          f"{torch.__version__}); use device = \"cpu\"")
    digests = {}
    if config.checkpoint:
        digests["checkpoint"] = file_digest(config.checkpoint)
    samples = _samples(config, builtin_cfg, digests, check_ks)
    loss_name = samples.default_loss if config.loss == "auto" else config.loss
    problem, loss_name = _make_problem(config, model, samples.tensors, loss_name, distributed)
    _check_problem(config, problem, loss_name)
    return LoadedSource(problem, config.model, loss_name, samples.description, digests)


def _samples(config: ProbeConfig, builtin_cfg: Any, digests: dict[str, str], check_ks: bool) -> _Samples:
    """The first ``n`` rows of the config's data (a file, recorded in
    ``digests``, or the built-in samples), checked to cover ``max(ks) + 1``
    samples (2 without ``check_ks``)."""
    cfg = config if check_ks else config.replace(ks=[1])
    if config.data != "builtin":
        tensors = load_data(config)
        digests["data"] = file_digest(config.data)
        rows = len(tensors["ids"]) if "ids" in tensors else tensors["inputs"].shape[0]
        n = _num_rows(cfg, rows)
        found = _Samples(tensors, f"{config.data} (first {n} of {rows} rows)",
                         "token_cross_entropy" if "ids" in tensors else "cross_entropy")
    else:
        n = config.num_data or (config.max_k + 1 if check_ks else 2)
        _num_rows(cfg, n)
        found = _builtin_samples(config, builtin_cfg, n)
    return _Samples({k: _take(v, n) for k, v in found.tensors.items()}, found.description,
                    found.default_loss)


def _builtin_samples(config: ProbeConfig, builtin_cfg: Any, n: int) -> _Samples:
    """``n`` built-in samples: a built-in model's held-out probe samples, or
    windows of the standard-library byte corpus for a module or ``hf:`` model."""
    target = config.model_target
    if config.model_kind == "builtin":
        try:
            inputs, targets = builtin_data(target, n, builtin_cfg)
        except ValueError as exc:  # the reason up to its hint, which names library arguments
            raise ConfigError(f"{n} samples requested (--k or num_data) but the built-in data of "
                              f"{target} is smaller: {_first_line(exc).split(';')[0]}") from None
        return _Samples({"inputs": inputs, "targets": targets},
                        f"built-in held-out samples of {target} (n={n})",
                        "token_cross_entropy" if target == "tiny-gpt" else "cross_entropy")
    try:
        ids = _builtin_lm_ids(config, n)
    except ValueError as exc:
        raise ConfigError(f"config key 'num_data': {_first_line(exc)}") from None
    return _Samples({"ids": ids},
                    f"standard-library byte corpus, {n} windows of {config.seq_len + 1} tokens "
                    f"(vocabulary {data.ByteTokenizer().vocab_size})",
                    "token_cross_entropy")


def _make_problem(config: ProbeConfig, model: nn.Module, tensors: dict[str, Any],
                  loss_name: str, distributed: bool = False) -> tuple[Problem, str]:
    """The :class:`Problem` on ``tensors`` and the name of its loss (an ``hf:``
    model's own next-token loss, else ``loss_name``); a failure to build it is
    a :class:`ConfigError`."""
    dtype, device = config.torch_dtype, config.device
    try:
        if config.model_kind == "hf":
            ids = tensors.get("ids")
            if ids is None:
                ids = tensors["inputs"]
            if isinstance(ids, TokenRows):  # the adapter packs padded rows: it needs them in memory
                ids = ids.tensor()
            _check_vocab(model, ids)
            return causal_lm(model, ids, attention_mask=tensors.get("attention_mask"),
                             batch_size=config.batch_size, dtype=dtype, device=device,
                             distributed=distributed), "next-token cross-entropy (hf)"
        loss_fn = {"cross_entropy": models.sample_cross_entropy,
                   "token_cross_entropy": models.token_cross_entropy,
                   "mse": mse_loss}[loss_name]
        if isinstance(tensors.get("ids"), TokenRows):
            _check_vocab(model, tensors["ids"])
            return Problem(model, loss_fn, tensors["ids"], batch_size=config.batch_size, dtype=dtype,
                           device=device, distributed=distributed), loss_name
        if "ids" in tensors:
            _check_vocab(model, tensors["ids"])
            inputs, targets = tensors["ids"][:, :-1], tensors["ids"][:, 1:]
        else:
            inputs, targets = tensors["inputs"], tensors["targets"]
        return Problem(model, loss_fn, inputs, targets, batch_size=config.batch_size,
                       dtype=dtype, device=device, distributed=distributed), loss_name
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(f"cannot build the problem: {_first_line(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(_first_line(exc)) from None


def _check_problem(config: ProbeConfig, problem: Problem, loss_name: str) -> None:
    """The model evaluates the first sample, and every ``D`` of ``config.dims``
    is below the parameter count N."""
    try:
        problem.per_sample_losses(stop=1)
    except Exception as exc:
        raise ConfigError(f"the model cannot evaluate the data with loss '{loss_name}': "
                          f"{_first_line(exc)}") from None
    bad_dims = [d for d in config.dims if d >= problem.num_params]
    if bad_dims:
        raise ConfigError(f"config key 'dims': D = {bad_dims[0]} must be < N = {problem.num_params} "
                          "(the number of parameters)")


def _check_vocab(model: nn.Module, ids: Tensor | TokenRows) -> None:
    vocab = None
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "vocab_size", None):
        vocab = int(config.vocab_size)
    else:
        embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        if embeddings:
            vocab = embeddings[0].num_embeddings
    largest = ids.min_max()[1] if isinstance(ids, TokenRows) else (int(ids.max()) if ids.numel() else -1)
    if vocab is not None and largest >= vocab:
        raise ConfigError(f"token id {largest} is outside the model's vocabulary of {vocab} ids")
