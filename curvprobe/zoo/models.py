"""Small reference models, their per-sample losses, training loop and cache.

Models
    :class:`TinyGPT` — a decoder-only transformer in the style of nanochat
    (token embedding, rotary positions, parameter-free RMSNorm, QK-norm,
    causal attention through ``F.scaled_dot_product_attention``, MLP, untied
    head, no biases, no dropout); :class:`MLP` and :class:`SmallCNN` — tiny
    classifiers with smooth activations whose dense Hessians are cheap.

All three are pure functions of their parameters and input: no in-place ops on
activations, no ``.item()``, no data-dependent control flow, no buffers (the
rotary table is computed in ``forward`` from ``arange``). They therefore work
under ``torch.func.functional_call``, ``grad``, ``jvp`` and ``vmap`` —
including ``vmap`` over samples with ``model(x.unsqueeze(0))`` — and in any
floating dtype after ``model.to(dtype)``. Second derivatives through attention
need a twice-differentiable kernel: wrap HVPs in
``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``.

Initialisation is seeded (``seed=0`` by default) through a local generator and
never touches the global RNG.

Losses
    :func:`token_cross_entropy` (mean next-token cross-entropy of each
    sequence) and :func:`sample_cross_entropy` return per-sample losses ℓ_i of
    shape (B,), the unit a :class:`~curvprobe.core.problem.Problem` orders.

Training and cache
    :func:`train` is a seeded AdamW loop; :func:`pretrained` trains a named
    reference model once (recipes in :data:`PRETRAINED_RECIPES`) and caches it
    under ``$CURVPROBE_CACHE`` (default ``~/.cache/curvprobe``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from curvprobe.results import atomic_write
from curvprobe.zoo import data

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "PRETRAINED_RECIPES",
    "CNNConfig",
    "GPTConfig",
    "MLPConfig",
    "Recipe",
    "SmallCNN",
    "TinyGPT",
    "apply_rotary",
    "cache_directory",
    "pretrained",
    "rotary_tables",
    "sample_cross_entropy",
    "token_cross_entropy",
    "train",
]

_CACHE_FORMAT = 1  # bump when an architecture or train() changes: old cache files go stale
_TRAIN_THREADS = 1  # pretrained() trains single-threaded: same weights on any core count


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "relu2": _relu2,  # nanochat's; second derivative jumps at 0 (Hessian defined a.e.)
}
"""Activations by name; "tanh" and "gelu" are smooth."""


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


_M = TypeVar("_M", bound=nn.Module)


def _uninitialised(module_cls: type[_M], *args, **kwargs) -> _M:
    """Construct a module without consuming the global RNG (weights set by the caller)."""
    return torch.nn.utils.skip_init(module_cls, *args, **kwargs)


def _normal_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std)


def _init_affine(module: nn.Linear | nn.Conv2d, generator: torch.Generator, gain: float = 1.0) -> None:
    """Weights N(0, gain² / fan_in), biases zero."""
    fan_in = module.weight[0].numel()
    _normal_(module.weight, gain / math.sqrt(fan_in), generator)
    if module.bias is not None:
        with torch.no_grad():
            module.bias.zero_()


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


# ------------------------------------------------------------------ TinyGPT


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a :class:`TinyGPT`.

    The defaults (byte vocabulary of :class:`curvprobe.zoo.data.ByteTokenizer`,
    2 layers of width 64, 4 heads) give 110,848 parameters.
    """

    vocab_size: int = 98
    seq_len: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    mlp_ratio: int = 4
    activation: str = "gelu"  # smooth; "relu2" is nanochat's choice
    rope_base: float = 10_000.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads of even size"
            )
        _activation(self.activation)


def rotary_tables(
    seq_len: int, head_dim: int, base: float, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles ``t · base^(-2j/head_dim)``: each (seq_len, head_dim/2)."""
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=like.dtype, device=like.device) / half)
    angles = torch.arange(seq_len, dtype=like.dtype, device=like.device)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim of x (…, T, head_dim) pairwise by the angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions and QK-norm."""

    def __init__(self, config: GPTConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.n_head = config.n_head
        d = config.n_embd
        self.c_q = _uninitialised(nn.Linear, d, d, bias=False)
        self.c_k = _uninitialised(nn.Linear, d, d, bias=False)
        self.c_v = _uninitialised(nn.Linear, d, d, bias=False)
        self.c_proj = _uninitialised(nn.Linear, d, d, bias=False)
        for lin in (self.c_q, self.c_k, self.c_v):
            _init_affine(lin, generator)
        _init_affine(self.c_proj, generator, gain=0.5 / math.sqrt(config.n_layer))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), cos/sin (T, head_dim/2) -> (B, T, C)."""
        B, T, C = x.shape
        heads = lambda t: t.reshape(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.c_q(x)), heads(self.c_k(x)), heads(self.c_v(x))
        q = _rms_norm(apply_rotary(q, cos, sin))
        k = _rms_norm(apply_rotary(k, cos, sin))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    """Position-wise MLP ``c_proj(act(c_fc(x)))`` with hidden width ``mlp_ratio · n_embd``."""

    def __init__(self, config: GPTConfig, generator: torch.Generator) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.act = _activation(config.activation)
        self.c_fc = _uninitialised(nn.Linear, config.n_embd, hidden, bias=False)
        self.c_proj = _uninitialised(nn.Linear, hidden, config.n_embd, bias=False)
        _init_affine(self.c_fc, generator)
        _init_affine(self.c_proj, generator, gain=0.5 / math.sqrt(config.n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm x)``, then ``x + mlp(norm x)``."""

    def __init__(self, config: GPTConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, generator)
        self.mlp = FeedForward(config, generator)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(_rms_norm(x), cos, sin)
        return x + self.mlp(_rms_norm(x))


class TinyGPT(nn.Module):
    """Decoder-only transformer (nanochat style) for next-token prediction.

    ``logits = lm_head(norm(h_L))``, ``h_0 = norm(wte[idx])``,
    ``h_l = Block_l(h_{l-1})``; norms are parameter-free RMSNorm, positions
    enter only through rotary embeddings of q and k (any T works;
    ``config.seq_len`` is the length it is trained on), ``lm_head`` is untied.

    Parameters
    ----------
    config : GPTConfig, optional
        Shape; ``GPTConfig()`` if None.
    seed : int
        Initialisation seed (local generator; the global RNG is untouched).
    """

    def __init__(self, config: GPTConfig | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config = config or GPTConfig()
        gen = torch.Generator().manual_seed(seed)
        self.wte = _uninitialised(nn.Embedding, config.vocab_size, config.n_embd)
        _normal_(self.wte.weight, 1.0, gen)
        self.blocks = nn.ModuleList(Block(config, gen) for _ in range(config.n_layer))
        self.lm_head = _uninitialised(nn.Linear, config.n_embd, config.vocab_size, bias=False)
        _init_affine(self.lm_head, gen, gain=0.1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) int64 -> next-token logits (B, T, vocab_size) in the model dtype."""
        x = _rms_norm(self.wte(idx))
        head_dim = self.config.n_embd // self.config.n_head
        cos, sin = rotary_tables(idx.shape[-1], head_dim, self.config.rope_base, like=x)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(_rms_norm(x))


# -------------------------------------------------------------- MLP and CNN


@dataclass(frozen=True)
class MLPConfig:
    """Layer widths ``(in, hidden..., out)`` and activation of an :class:`MLP`.

    The default (8, 16, 16, 3) with tanh has 467 parameters.
    """

    widths: tuple[int, ...] = (8, 16, 16, 3)
    activation: str = "tanh"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))  # JSON lists
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths needs >= 2 positive entries, got {self.widths}")
        _activation(self.activation)


class MLP(nn.Module):
    """Fully connected classifier: affine layers with ``activation`` between them.

    ``forward``: x (B, widths[0]) float -> logits (B, widths[-1]).
    """

    def __init__(self, config: MLPConfig | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config = config or MLPConfig()
        gen = torch.Generator().manual_seed(seed)
        self.act = _activation(config.activation)
        self.layers = nn.ModuleList(
            _uninitialised(nn.Linear, a, b) for a, b in zip(config.widths[:-1], config.widths[1:])
        )
        for layer in self.layers:
            _init_affine(cast(nn.Linear, layer), gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, widths[0]) float -> logits (B, widths[-1]), same dtype."""
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


@dataclass(frozen=True)
class CNNConfig:
    """Shape of a :class:`SmallCNN`; the default has 723 parameters."""

    in_channels: int = 1
    size: int = 8
    channels: tuple[int, int] = (4, 8)
    num_classes: int = 3
    activation: str = "tanh"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 2:
            raise ValueError(f"channels must have two entries, got {self.channels}")
        _activation(self.activation)


class SmallCNN(nn.Module):
    """Two 3×3 convolutions (the second with stride 2) and a linear head; no batch-norm.

    ``forward``: x (B, in_channels, size, size) float -> logits (B, num_classes).
    """

    def __init__(self, config: CNNConfig | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config = config or CNNConfig()
        gen = torch.Generator().manual_seed(seed)
        c1, c2 = config.channels
        reduced = (config.size - 1) // 2 + 1
        self.act = _activation(config.activation)
        self.conv1 = _uninitialised(nn.Conv2d, config.in_channels, c1, 3, padding=1)
        self.conv2 = _uninitialised(nn.Conv2d, c1, c2, 3, stride=2, padding=1)
        self.head = _uninitialised(nn.Linear, c2 * reduced * reduced, config.num_classes)
        for layer in (self.conv1, self.conv2, self.head):
            _init_affine(layer, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, size, size) float -> logits (B, num_classes), same dtype."""
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.head(x.flatten(start_dim=1))


# ------------------------------------------------------------------- losses


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sequence loss ℓ_i = (1/T) Σ_t −log softmax(logits[i, t])[targets[i, t]].

    Parameters
    ----------
    logits : torch.Tensor
        (B, T, V) float.
    targets : torch.Tensor
        (B, T) int64.

    Returns
    -------
    torch.Tensor
        (B,) in the dtype of ``logits``.
    """
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return per_token.mean(dim=-1)


def sample_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample loss ℓ_i = −log softmax(logits[i])[targets[i]]: logits (B, C), targets (B,) -> (B,)."""
    return F.cross_entropy(logits, targets, reduction="none")


# ----------------------------------------------------------------- training


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first min(100, steps/10) steps, then cosine decay to 0."""
    warmup = max(1, min(100, steps // 10))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """Minimise the mean of ``loss_fn(model(x), y)`` with AdamW, in place.

    Minibatches walk seeded permutations of the samples (a new one each
    epoch, from a local generator). The learning rate warms up linearly, then
    follows a cosine decay to 0, so training ends near a stationary point of
    the empirical loss — the point curvprobe then probes. ``weight_decay``
    defaults to 0 for the same reason.

    Parameters
    ----------
    model : nn.Module
        Trained in place; its parameters' dtype is used as is.
    inputs : torch.Tensor
        (n, ...) samples; indexed along dim 0.
    targets : torch.Tensor
        (n, ...) matching targets.
    loss_fn : callable
        Per-sample loss, ``(model output, targets) -> (B,)``.
    steps : int
        Optimisation steps (minibatches).
    lr : float
        Peak learning rate.
    batch_size : int
        Minibatch size (capped at n).
    seed : int
        Seed of the minibatch order.
    weight_decay : float
        AdamW weight decay (default 0, see above).
    progress : bool
        Show a tqdm bar (only when stdout is a terminal).

    Returns
    -------
    model : nn.Module
        The same model, in eval mode.
    losses : list of float
        The minibatch loss of every step.
    """
    n = inputs.shape[0]
    if n != targets.shape[0] or n == 0:
        raise ValueError(f"inputs and targets need the same non-zero length, got {n}, {targets.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batch = min(batch_size, n)
    order, cursor = torch.randperm(n, generator=gen), 0
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="training", disable=not (progress and sys.stdout.isatty()))
    for step in bar:
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(step, steps)
        loss = loss_fn(model(inputs[idx]), targets[idx]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return model.eval(), losses


# ------------------------------------------------------------- pretrained


@dataclass(frozen=True)
class Recipe:
    """How a named reference model is trained.

    The training data are ``num_samples`` samples from the data function of
    the name with ``seed=data_seed`` (``split="train"`` for text); probe with
    held-out data (another seed, or ``split="probe"``) or the same samples.
    """

    num_samples: int
    steps: int
    lr: float
    batch_size: int
    data_seed: int = 0
    init_seed: int = 0
    train_seed: int = 0


PRETRAINED_RECIPES: dict[str, Recipe] = {
    "tiny-gpt": Recipe(num_samples=48_000, steps=4_000, lr=1e-2, batch_size=32),
    "mlp": Recipe(num_samples=4_096, steps=2_000, lr=1e-2, batch_size=64),
    "cnn": Recipe(num_samples=2_048, steps=1_500, lr=1e-2, batch_size=64),
}
"""Training recipes of the names :func:`pretrained` accepts.

"tiny-gpt": ``GPTConfig()`` on ``data.token_sequences(48_000, 32, split="train")``;
"mlp": ``MLPConfig()`` on ``data.synthetic_classification(4_096)``;
"cnn": ``CNNConfig()`` on ``data.synthetic_images(2_048)``.
"""

_CONFIGS = {"tiny-gpt": GPTConfig, "mlp": MLPConfig, "cnn": CNNConfig}
_MODELS = {"tiny-gpt": TinyGPT, "mlp": MLP, "cnn": SmallCNN}


def _training_data(name: str, recipe: Recipe, config) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "tiny-gpt":
        return data.token_sequences(recipe.num_samples, config.seq_len, seed=recipe.data_seed)
    if name == "mlp":
        return data.synthetic_classification(
            recipe.num_samples, config.widths[0], config.widths[-1], seed=recipe.data_seed
        )
    return data.synthetic_images(
        recipe.num_samples, config.size, config.num_classes, seed=recipe.data_seed
    )


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$CURVPROBE_CACHE``, else ``$XDG_CACHE_HOME/curvprobe``
    (default ``~/.cache/curvprobe``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("CURVPROBE_CACHE"):
        return Path(os.environ["CURVPROBE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "curvprobe"


def _cache_key(name: str, config, recipe: Recipe, inputs: torch.Tensor, targets: torch.Tensor) -> str:
    digest = hashlib.sha256()
    spec = {"format": _CACHE_FORMAT, "name": name,
            "config": dataclasses.asdict(config), "recipe": dataclasses.asdict(recipe)}
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for tensor in (inputs, targets):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)




def pretrained(
    name: str = "tiny-gpt",
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    steps: int | None = None,
) -> tuple[nn.Module, GPTConfig | MLPConfig | CNNConfig]:
    """A trained reference model, trained on first use and cached.

    Names and their recipes are in :data:`PRETRAINED_RECIPES` ("tiny-gpt",
    "mlp", "cnn"). Training is seeded and deterministic for a given torch
    build; "tiny-gpt" takes about 90 s on one CPU core,
    "mlp" and "cnn" a few seconds. Training runs single-threaded (the
    previous ``torch.get_num_threads()`` is restored), which is as fast for
    models this small and makes the weights independent of the core count.
    The cache file
    ``<cache>/<name>-<key>.pt`` (see :func:`cache_directory`) holds the state
    dict, the config and recipe as JSON-able dicts, the per-step training
    losses and the training time; ``key`` hashes the config, the recipe and
    the training data, so a different standard-library corpus (another Python
    version) or another ``steps`` gets its own file. Files are written
    atomically and read with ``torch.load(..., weights_only=True)``.

    Parameters
    ----------
    name : str
        "tiny-gpt", "mlp" or "cnn".
    cache_dir : str or os.PathLike, optional
        Overrides the cache directory.
    progress : bool
        Show a progress bar while training (terminal only).
    steps : int, optional
        Override the recipe's step count (e.g. tiny runs in tests).

    Returns
    -------
    model : nn.Module
        The model in eval mode, float32 on CPU (cast it as needed).
    config : GPTConfig, MLPConfig or CNNConfig
        Its config dataclass.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name not in PRETRAINED_RECIPES:
        raise ValueError(f"unknown pretrained model {name!r}; valid names: {sorted(PRETRAINED_RECIPES)}")
    recipe = PRETRAINED_RECIPES[name]
    if steps is not None:
        recipe = dataclasses.replace(recipe, steps=steps)
    config = _CONFIGS[name]()
    inputs, targets = _training_data(name, recipe, config)
    path = cache_directory(cache_dir) / f"{name}-{_cache_key(name, config, recipe, inputs, targets)}.pt"
    model = _MODELS[name](config, seed=recipe.init_seed)
    if path.exists():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["state_dict"])
        return model.eval(), config
    loss_fn = token_cross_entropy if name == "tiny-gpt" else sample_cross_entropy
    start = time.perf_counter()
    with _torch_threads(_TRAIN_THREADS):
        model, losses = train(
            model, inputs, targets, loss_fn, steps=recipe.steps, lr=recipe.lr,
            batch_size=recipe.batch_size, seed=recipe.train_seed, progress=progress,
        )
    payload = {
        "format": _CACHE_FORMAT,
        "name": name,
        "state_dict": model.state_dict(),
        "config": dataclasses.asdict(config),
        "recipe": dataclasses.asdict(recipe),
        "losses": losses,
        "train_seconds": time.perf_counter() - start,
        "torch_version": str(torch.__version__),
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return model, config
