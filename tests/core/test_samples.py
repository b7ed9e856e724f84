"""Samples behind a Problem: tensors in memory, or an indexable Dataset read one chunk at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset, TensorDataset

from curvprobe import Problem
from curvprobe.core.samples import TokenRows
from curvprobe.criteria.engine import subspace_derivatives
from curvprobe.zoo.models import GPTConfig, TinyGPT, token_cross_entropy


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> np.memmap:
    gen = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("tokens") / "ids.npy"
    np.save(path, gen.integers(0, 11, size=(13, 7)).astype(np.uint16))  # a compact on-disk dtype
    return np.load(path, mmap_mode="r")


def _pair(token_file) -> tuple[Problem, Problem]:
    model = TinyGPT(GPTConfig(vocab_size=11, seq_len=6, n_layer=1, n_head=2, n_embd=12, mlp_ratio=2),
                    seed=0).double().eval()
    ids = torch.from_numpy(np.array(token_file, dtype=np.int64))
    eager = Problem(model, token_cross_entropy, ids[:, :-1], ids[:, 1:], batch_size=4)
    lazy = Problem(model, token_cross_entropy, TokenRows(token_file), batch_size=4)
    return eager, lazy


def test_lazy_rows_give_the_in_memory_results(token_file):
    eager, lazy = _pair(token_file)
    assert lazy.num_samples == eager.num_samples == 13
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(eager.num_params, 2, generator=gen, dtype=torch.float64)
    W = eager.params + 0.1 * torch.randn(3, eager.num_params, generator=gen, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(eager.num_params, 2, generator=gen, dtype=torch.float64))[0]
    pairs = [(eager.per_sample_losses(), lazy.per_sample_losses()),
             (eager.gradient(k=9), lazy.gradient(k=9)), (eager.hvp(V, 11), lazy.hvp(V, 11)),
             (eager.per_sample_losses_at(W), lazy.per_sample_losses_at(W)),
             (subspace_derivatives(eager, U, range(5))[1], subspace_derivatives(lazy, U, range(5))[1])]
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(AttributeError, match="chunk by chunk"):
        _ = lazy.inputs


def test_token_rows_read_only_what_is_asked(token_file):
    rows = TokenRows(token_file)
    assert rows.head(4).ids.shape == (4, 7) and isinstance(rows.head(4).ids, np.memmap)
    x, y = rows[5]
    assert x.dtype == torch.long and torch.equal(x[1:], y[:-1])
    assert rows.min_max(rows_per_block=3) == (int(token_file.min()), int(token_file.max()))
    with pytest.raises(ValueError, match="integers"):
        TokenRows(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\(n, T\+1\)"):
        TokenRows(np.zeros((3, 1), dtype=np.int64))


def test_dataset_input_errors_name_the_fix():
    model = torch.nn.Linear(3, 2).double()
    X, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    loss = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    same = Problem(model, loss, TensorDataset(X, y), batch_size=4)
    torch.testing.assert_close(same.gradient(), Problem(model, loss, X, y, batch_size=4).gradient(),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="targets=None"):
        Problem(model, loss, TensorDataset(X, y), y)
    unsupervised = Problem(model, lambda out, batch: (out**2).sum(1), X)  # no targets: loss sees the batch
    assert unsupervised.loss_input == "batch" and unsupervised.targets is None

    class Stream(IterableDataset):
        def __iter__(self):
            yield X[0], y[0]

    with pytest.raises(TypeError, match="indexable"):
        Problem(model, loss, Stream())
