"""Ordered samples of a :class:`~curvprobe.core.problem.Problem`: in memory or read lazily.

Two stores share one interface (:class:`Samples`): ``chunk(a, b)`` returns the
inputs and targets of samples ``a..b−1`` on the problem's device, and
``select(indices)`` those of arbitrary samples (for ``vmap`` over samples).

- :class:`TensorSamples`: tensors indexed on dim 0, moved to the device once.
- :class:`DatasetSamples`: an indexable ``torch.utils.data.Dataset`` whose
  items are ``(inputs, target)`` (``inputs`` a tensor or a tuple of tensors),
  kept where it lives (host memory, a memory-mapped token file) and collated
  one chunk at a time onto the device, so device memory holds one chunk of
  data whatever the data set's size.

Floating-point tensors are cast to the problem's dtype; integer tensors (token
ids, labels) keep theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

__all__ = ["DatasetSamples", "Samples", "TensorSamples", "TokenRows", "cast"]


def cast(t: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``t`` on ``device``; floating tensors in ``dtype``, others in their own dtype."""
    t = torch.as_tensor(t)
    return t.to(device, dtype) if t.is_floating_point() else t.to(device)


class Samples(Protocol):
    """What a Problem reads its samples through."""

    num_inputs: int

    def __len__(self) -> int: ...

    def chunk(self, a: int, b: int) -> tuple[tuple[Tensor, ...], Tensor]: ...

    def select(self, indices: Tensor) -> tuple[Tensor, ...]: ...


class TensorSamples:
    """Samples held as tensors on the device: ``inputs`` (tuple, each (n, ...)) and ``targets`` (n, ...)."""

    def __init__(self, inputs: Sequence[Tensor], targets: Tensor, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.inputs = tuple(cast(x, device, dtype) for x in inputs)
        self.targets = cast(targets, device, dtype)
        sizes = {x.shape[0] for x in self.inputs} | {self.targets.shape[0]}
        if len(sizes) != 1:
            raise ValueError(f"inputs and targets disagree on the number of samples: {sorted(sizes)}")
        self._n = sizes.pop()
        self.num_inputs = len(self.inputs)

    def __len__(self) -> int:
        return self._n

    def chunk(self, a: int, b: int) -> tuple[tuple[Tensor, ...], Tensor]:
        """Inputs and targets of samples ``a..b−1``."""
        return tuple(x[a:b] for x in self.inputs), self.targets[a:b]

    def select(self, indices: Tensor) -> tuple[Tensor, ...]:
        """``(targets, *inputs)`` of the 0-based ``indices``."""
        sel = indices.to(self.targets.device)
        return (self.targets[sel], *(x[sel] for x in self.inputs))


class DatasetSamples:
    """Samples read from an indexable Dataset of ``(inputs, target)`` items, one chunk at a time."""

    def __init__(self, dataset: Dataset, device: torch.device, dtype: torch.dtype) -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]  # map-style Datasets define __len__
        except TypeError:
            raise TypeError("a Problem needs an ordered, indexable data set: a torch.utils.data.Dataset "
                            "with __len__ and __getitem__ (an IterableDataset has no order to index)") \
                from None
        if n < 1:
            raise ValueError("the data set holds no samples")
        first = dataset[0]
        if not (isinstance(first, (tuple, list)) and len(first) == 2):
            raise TypeError(f"data set items must be (inputs, target) pairs, got {type(first).__name__}")
        self.dataset, self.device, self.dtype, self._n = dataset, device, dtype, int(n)
        self.num_inputs = len(first[0]) if isinstance(first[0], (tuple, list)) else 1

    def __len__(self) -> int:
        return self._n

    def _collate(self, indices: Sequence[int]) -> tuple[tuple[Tensor, ...], Tensor]:
        inputs, targets = default_collate([self.dataset[int(i)] for i in indices])
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return (tuple(cast(x, self.device, self.dtype) for x in inputs),
                cast(targets, self.device, self.dtype))

    def chunk(self, a: int, b: int) -> tuple[tuple[Tensor, ...], Tensor]:
        """Inputs and targets of samples ``a..b−1``, collated and moved to the device."""
        return self._collate(range(a, b))

    def select(self, indices: Tensor) -> tuple[Tensor, ...]:
        """``(targets, *inputs)`` of the 0-based ``indices``."""
        inputs, targets = self._collate(indices.tolist())
        return (targets, *inputs)


class TokenRows(Dataset):
    """Rows of a token-id array ``ids`` (n, T+1) as next-token samples ``(ids[i, :-1], ids[i, 1:])``.

    ``ids`` may be a memory-mapped ``.npy`` file (``numpy.load(path,
    mmap_mode="r")``): a row is read and converted to a LongTensor only when a
    chunk asks for it, so neither host nor device memory holds the whole file.
    """

    def __init__(self, ids: np.ndarray) -> None:
        if ids.ndim != 2 or ids.shape[1] < 2:
            raise ValueError(f"token ids must have shape (n, T+1) with T >= 1, got {tuple(ids.shape)}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        self.ids = ids

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        row = torch.from_numpy(np.array(self.ids[i], dtype=np.int64))
        return row[:-1], row[1:]

    def head(self, n: int) -> TokenRows:
        """The first ``n`` rows (a view: nothing is read)."""
        return TokenRows(self.ids[:n])

    def min_max(self, rows_per_block: int = 4096) -> tuple[int, int]:
        """Smallest and largest token id, read block by block."""
        lo, hi = None, None
        for a in range(0, len(self), rows_per_block):
            block = np.asarray(self.ids[a:a + rows_per_block])
            lo = int(block.min()) if lo is None else min(lo, int(block.min()))
            hi = int(block.max()) if hi is None else max(hi, int(block.max()))
        return int(lo or 0), int(hi or 0)

    def tensor(self) -> Tensor:
        """All rows as one LongTensor (n, T+1), for consumers that need the ids in memory."""
        return torch.from_numpy(np.array(self.ids, dtype=np.int64))
