"""Built-in corpora and datasets: a byte-level text corpus and synthetic tasks.

Everything here is deterministic given its seed, needs no download and never
touches the global random number generator: every random draw goes through a
local ``torch.Generator().manual_seed(seed)``.

Text
    :func:`stdlib_corpus` concatenates the Python standard library's own
    top-level ``.py`` sources (sorted by file name) — every Python install
    ships them. :class:`ByteTokenizer` maps bytes to a vocabulary of 98 ids
    (printable ASCII, tab, newline, and one unknown id).
    :func:`token_sequences` cuts the token stream into non-overlapping
    next-token windows, from one of two disjoint regions of the corpus
    ("train": the first 80 %, "probe": the last 20 %), in a seeded order.

    The corpus depends on the interpreter's standard library, so two Python
    versions give different (equally valid) corpora; record
    :func:`corpus_digest` with results that used it.

Synthetic classification
    :func:`synthetic_classification` (vectors, labels drawn from a fixed random
    teacher network) and :func:`synthetic_images` (oriented gratings in noise)
    feed the reference MLP and CNN of :mod:`curvprobe.zoo.models`.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEFAULT_CORPUS_BYTES",
    "PROBE_FRACTION",
    "SPLITS",
    "ByteTokenizer",
    "corpus_digest",
    "corpus_tokens",
    "split_range",
    "stdlib_corpus",
    "synthetic_classification",
    "synthetic_images",
    "token_sequences",
    "window_offsets",
]

DEFAULT_CORPUS_BYTES = 2_000_000
"""Default corpus size in bytes (≈ 48,000 train and ≈ 12,000 probe windows of 33)."""

PROBE_FRACTION = 0.2
"""Fraction of the token stream, at its end, reserved for the "probe" split."""

SPLITS = ("train", "probe")

_UNK_ID = 0
_VOCAB_BYTES = (9, 10, *range(32, 127))  # tab, newline, printable ASCII
_BYTE_TO_ID = np.zeros(256, dtype=np.int64)  # every other byte -> _UNK_ID
_BYTE_TO_ID[list(_VOCAB_BYTES)] = np.arange(1, len(_VOCAB_BYTES) + 1)
_ID_TO_CHAR = ("\ufffd", *(chr(b) for b in _VOCAB_BYTES))
_TEACHER_SEED_OFFSET = 0x7EAC_0000  # keeps teacher and sample streams apart


# --------------------------------------------------------------------- text


@dataclass(frozen=True)
class ByteTokenizer:
    """Byte-level tokenizer with a 98-id vocabulary.

    Id 0 is the unknown token; ids 1 and 2 are tab and newline; ids 3..97 are
    the printable ASCII bytes 32..126 in order. Text is encoded as UTF-8 and
    each byte outside the vocabulary (every byte of a non-ASCII character,
    carriage returns, other control bytes) becomes one unknown id. Decoding
    renders the unknown id as U+FFFD, so ``decode(encode(s)) == s`` exactly
    when ``s`` contains only tab, newline and printable ASCII.
    """

    @property
    def vocab_size(self) -> int:
        """Number of token ids (98)."""
        return len(_ID_TO_CHAR)

    @property
    def unk_id(self) -> int:
        """Id of the unknown token (0)."""
        return _UNK_ID

    def encode(self, text: str | bytes) -> torch.Tensor:
        """Token ids of ``text``: int64 tensor of shape (number of UTF-8 bytes,)."""
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = _BYTE_TO_ID[np.frombuffer(raw, dtype=np.uint8)]
        return torch.from_numpy(ids)

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """Text of a 1-D sequence of token ids (unknown id -> U+FFFD).

        Raises ValueError for ids outside ``[0, vocab_size)``.
        """
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [v for v in values if not 0 <= v < len(_ID_TO_CHAR)]
        if bad:
            raise ValueError(f"token ids outside [0, {len(_ID_TO_CHAR)}): {bad[:5]}")
        return "".join(_ID_TO_CHAR[v] for v in values)


def stdlib_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> str:
    """Text of the Python standard library's top-level ``.py`` sources.

    Files in ``sysconfig.get_paths()["stdlib"]`` are read in sorted file-name
    order and joined by a newline; the UTF-8 bytes are cut at ``max_bytes``
    (fewer if the library is smaller, ≈ 4.7 MB on CPython 3.11) and decoded
    with invalid sequences replaced by U+FFFD. Deterministic for a given
    interpreter; see :func:`corpus_digest`.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[bytes] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        if total >= max_bytes:
            break
        chunk = path.read_bytes()
        chunks.append(chunk)
        total += len(chunk) + 1
    if not chunks:
        raise FileNotFoundError(f"no .py sources found in the standard library at {root}")
    return b"\n".join(chunks)[:max_bytes].decode("utf-8", errors="replace")


def corpus_tokens(max_bytes: int = DEFAULT_CORPUS_BYTES) -> torch.Tensor:
    """``ByteTokenizer().encode(stdlib_corpus(max_bytes))``: int64, shape (n_tokens,)."""
    return ByteTokenizer().encode(stdlib_corpus(max_bytes))


def corpus_digest(max_bytes: int = DEFAULT_CORPUS_BYTES) -> str:
    """SHA-256 (hex) of the token stream: identifies the corpus for provenance."""
    return hashlib.sha256(corpus_tokens(max_bytes).numpy().tobytes()).hexdigest()


def split_range(num_tokens: int, split: str) -> tuple[int, int]:
    """Token index range ``[start, stop)`` of ``split`` in a stream of ``num_tokens``.

    "train" is ``[0, cut)`` and "probe" is ``[cut, num_tokens)`` with
    ``cut = floor((1 - PROBE_FRACTION) * num_tokens)``, so the splits never
    share a token.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cut = math.floor((1.0 - PROBE_FRACTION) * num_tokens)
    return (0, cut) if split == "train" else (cut, num_tokens)


def window_offsets(
    num_sequences: int, seq_len: int, num_tokens: int, *, seed: int = 0, split: str = "train"
) -> torch.Tensor:
    """Start offsets in the token stream of the windows :func:`token_sequences` returns.

    The split's range is tiled by non-overlapping windows of ``seq_len + 1``
    tokens; a seeded permutation of the tiles gives the order, and the first
    ``num_sequences`` are returned. The order is therefore prefix-stable: for
    one seed, a smaller ``num_sequences`` gives a prefix of a larger one.

    Returns
    -------
    torch.Tensor
        int64, shape (num_sequences,); window i covers tokens
        ``[offsets[i], offsets[i] + seq_len + 1)``.

    Raises
    ------
    ValueError
        If the split holds fewer than ``num_sequences`` windows.
    """
    if seq_len < 1 or num_sequences < 0:
        raise ValueError(f"need seq_len >= 1 and num_sequences >= 0, got {seq_len}, {num_sequences}")
    start, stop = split_range(num_tokens, split)
    width = seq_len + 1
    available = (stop - start) // width
    if num_sequences > available:
        raise ValueError(
            f"the {split!r} split holds {available} windows of {width} tokens, "
            f"{num_sequences} requested; lower seq_len or raise the corpus max_bytes"
        )
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    return start + width * order[:num_sequences]


def token_sequences(
    num_sequences: int,
    seq_len: int,
    *,
    seed: int = 0,
    split: str = "train",
    max_bytes: int = DEFAULT_CORPUS_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token windows of the standard-library corpus.

    Windows come from :func:`window_offsets` (non-overlapping, seeded order,
    disjoint "train" and "probe" regions). With the default corpus there are
    ≈ 48,000 train and ≈ 12,000 probe windows at ``seq_len=32``.

    Returns
    -------
    inputs : torch.Tensor
        int64, shape (num_sequences, seq_len).
    targets : torch.Tensor
        int64, shape (num_sequences, seq_len), with
        ``targets[:, t] = inputs[:, t + 1]`` for ``t < seq_len - 1``
        (targets are the inputs shifted by one token).
    """
    tokens = corpus_tokens(max_bytes)
    offsets = window_offsets(num_sequences, seq_len, tokens.numel(), seed=seed, split=split)
    windows = tokens[offsets[:, None] + torch.arange(seq_len + 1)]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


# ---------------------------------------------------------------- synthetic


def synthetic_classification(
    num_samples: int,
    num_features: int = 8,
    num_classes: int = 3,
    *,
    seed: int = 0,
    teacher_seed: int = 0,
    teacher_width: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification data labelled by a fixed random teacher network.

    ``x ~ N(0, I)``; the teacher (drawn from ``teacher_seed`` only, so every
    ``seed`` shares it) computes logits
    ``f(x) = 3 tanh(x W1 / sqrt(F)) W2 / sqrt(teacher_width)`` with standard
    normal ``W1`` (F × teacher_width) and ``W2`` (teacher_width × C), and the
    label is *sampled* from ``softmax(f(x))``. The label noise keeps the
    minimum empirical loss away from zero, so a trained model sits near a
    genuine minimum with a non-degenerate Hessian.

    Returns
    -------
    X : torch.Tensor
        float32, shape (num_samples, num_features).
    y : torch.Tensor
        int64, shape (num_samples,), values in ``[0, num_classes)``.
    """
    teacher = torch.Generator().manual_seed(_TEACHER_SEED_OFFSET + teacher_seed)
    w1 = torch.randn(num_features, teacher_width, generator=teacher, dtype=torch.float64)
    w2 = torch.randn(teacher_width, num_classes, generator=teacher, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, num_features, generator=gen, dtype=torch.float64)
    logits = 3.0 * torch.tanh(x @ w1 / math.sqrt(num_features)) @ w2 / math.sqrt(teacher_width)
    y = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).squeeze(-1)
    return x.float(), y


def synthetic_images(
    num_samples: int,
    size: int = 8,
    num_classes: int = 3,
    *,
    seed: int = 0,
    noise: float = 1.5,
    cycles: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oriented gratings in Gaussian noise; the class is the orientation.

    Class c has orientation ``θ_c = π c / num_classes``; an image is
    ``cos(2π cycles (u cos θ + v sin θ) / size + φ) + noise · N(0, 1)`` on the
    pixel grid (u, v), with a random phase φ ~ U(0, 2π) per image, so the
    class is translation-invariant and a small CNN can learn it.

    Returns
    -------
    X : torch.Tensor
        float32, shape (num_samples, 1, size, size).
    y : torch.Tensor
        int64, shape (num_samples,), labels uniform over ``[0, num_classes)``.
    """
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(num_classes, (num_samples,), generator=gen)
    phase = 2 * math.pi * torch.rand(num_samples, generator=gen, dtype=torch.float64)
    theta = math.pi * y.double() / num_classes
    grid = torch.arange(size, dtype=torch.float64)
    u, v = grid[:, None], grid[None, :]
    proj = u * theta.cos()[:, None, None] + v * theta.sin()[:, None, None]
    clean = torch.cos(2 * math.pi * cycles * proj / size + phase[:, None, None])
    noisy = clean + noise * torch.randn(num_samples, size, size, generator=gen, dtype=torch.float64)
    return noisy.unsqueeze(1).float(), y
