"""Ordered samples of a :class:`~curvprobe.core.problem.Problem`: in memory or read lazily.

A chunk of samples is a :class:`Batch`: ``inputs`` (a tensor, or a tuple or
dict of tensors, nested as deep as the model needs), ``targets`` (the same, or
None) and ``extras`` (a dict of further per-sample tensors, such as weights or
masks that a loss reads) — every tensor with the samples on dim 0. Two stores
share one interface (:class:`Samples`): ``chunk(a, b)`` returns samples
``a..b−1`` on the problem's device and ``select(indices)`` arbitrary samples
(for ``vmap`` over samples).

- :class:`TensorSamples`: pytrees of tensors, moved to the device once.
- :class:`DatasetSamples`: an indexable ``torch.utils.data.Dataset`` whose
  items are ``(inputs, target)`` pairs, kept where it lives (host memory, a
  memory-mapped token file: :class:`TokenRows`) and collated one chunk at a
  time onto the device, so device memory holds one chunk of data whatever the
  data set's size.

Floating-point tensors are cast to the problem's dtype; integer and boolean
tensors (token ids, labels, masks) keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch.utils.data import Dataset, default_collate

__all__ = ["Batch", "DatasetSamples", "Samples", "TensorSamples", "TokenRows", "cast", "leaves",
           "tree_map"]


class Batch(NamedTuple):
    """Samples of one chunk: ``inputs``, ``targets`` (or None) and ``extras``, samples on dim 0.

    A pytree (``torch.func`` transforms map over it).
    """

    inputs: Any
    targets: Any
    extras: Mapping[str, Tensor]


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """``fn`` applied to every tensor of a pytree (None stays None)."""
    return pytree.tree_map(lambda x: None if x is None else fn(x), tree)


def leaves(tree: Any) -> list[Tensor]:
    """The tensors of a pytree."""
    return [x for x in pytree.tree_leaves(tree) if x is not None]


def cast(t: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``t`` on ``device``; floating tensors in ``dtype``, others in their own dtype."""
    t = torch.as_tensor(t)
    return t.to(device, dtype) if t.is_floating_point() else t.to(device)


def _check_tree(name: str, tree: Any) -> None:
    bad = [type(x).__name__ for x in pytree.tree_leaves(tree) if x is not None and not isinstance(x, Tensor)]
    if bad:
        raise TypeError(f"{name} must be tensors, or tuples/lists/dicts of tensors; found {bad[0]}")


class Samples(Protocol):
    """What a Problem reads its samples through."""

    def __len__(self) -> int: ...

    def chunk(self, a: int, b: int) -> Batch: ...

    def select(self, indices: Tensor) -> Batch: ...


class TensorSamples:
    """Samples held as pytrees of tensors on the device (every tensor (n, ...))."""

    def __init__(self, inputs: Any, targets: Any, extras: Mapping[str, Tensor] | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        for name, tree in (("inputs", inputs), ("targets", targets), ("extras", extras)):
            _check_tree(name, tree)
        move = lambda tree: tree_map(lambda x: cast(x, device, dtype), tree)  # noqa: E731
        self.batch = Batch(move(inputs), move(targets), move(dict(extras or {})))
        sizes = {name: {x.shape[0] if x.dim() else -1 for x in leaves(tree)}
                 for name, tree in zip(Batch._fields, self.batch)}
        found = set().union(*sizes.values())
        if len(found) != 1 or -1 in found:
            where = ", ".join(f"{k} {sorted(v)}" for k, v in sizes.items() if v)
            raise ValueError(f"inputs, targets and extras disagree on the number of samples (dim 0 of "
                             f"every tensor): {where}")
        self._n = found.pop()

    def __len__(self) -> int:
        return self._n

    def chunk(self, a: int, b: int) -> Batch:
        """Samples ``a..b−1``."""
        return tree_map(lambda x: x[a:b], self.batch)

    def select(self, indices: Tensor) -> Batch:
        """The samples at the 0-based ``indices``."""
        sel = indices.to(leaves(self.batch)[0].device)
        return tree_map(lambda x: x[sel], self.batch)


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

    def __len__(self) -> int:
        return self._n

    def _collate(self, indices: Sequence[int]) -> Batch:
        inputs, targets = default_collate([self.dataset[int(i)] for i in indices])
        if isinstance(inputs, (Tensor, list)):  # the model's positional arguments
            inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
        move = lambda tree: tree_map(lambda x: cast(x, self.device, self.dtype), tree)  # noqa: E731
        return Batch(move(inputs), move(targets), {})

    def chunk(self, a: int, b: int) -> Batch:
        """Samples ``a..b−1``, collated and moved to the device."""
        return self._collate(range(a, b))

    def select(self, indices: Tensor) -> Batch:
        """The samples at the 0-based ``indices``."""
        return self._collate(indices.tolist())


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
