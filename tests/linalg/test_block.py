"""method="block": block Lanczos from b random vectors (batched products),
certified like the single-vector path; and what one Lanczos step reads on the
host."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linalg_cases import check_certified, check_certified_end, random_symmetric, spectrum

from curvprobe import MatrixOperator, top_eigenspace
from curvprobe.core.operators import LinearOperator
from curvprobe.linalg import BLOCK_SIZE, thick_restart_lanczos

from conftest import dense_hessian


class Widths(MatrixOperator):
    """Records the width of every product."""

    def __init__(self, A) -> None:
        super().__init__(A)
        self.widths: list[int] = []

    def _matmat(self, V):
        self.widths.append(V.shape[1])
        return super()._matmat(V)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(kind=st.sampled_from(["spread", "clustered", "degenerate", "negative", "bulk"]),
       b=st.integers(2, 6), D=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_block_matches_eigh(kind, b, D, seed):
    rng = np.random.default_rng(seed)
    A = random_symmetric(spectrum(kind, 150, rng), rng)
    es = top_eigenspace(MatrixOperator(A), D, tol=1e-6, seed=seed % 1000, method="block", block_size=b)
    check_certified(es, A, D, 1e-6)
    assert es.method == "block"


def test_block_products_are_batched_and_see_repeated_eigenvalues():
    """The solve's products come in blocks of b (the guard's are single);
    a block of 3 holds every copy of a triple eigenvalue without a repair."""
    rng = np.random.default_rng(0)
    A = random_symmetric(np.r_[[5.0] * 3, [4.0] * 3, rng.uniform(-3, 3, 194)], rng)
    op = Widths(A)
    es = top_eigenspace(op, 6, tol=1e-8, method="block", block_size=3)
    check_certified(es, A, 6, 1e-8)
    solve = [w for w in op.widths if w != 1]
    assert solve and set(solve) == {3} and sum(op.widths) == es.num_matvecs
    single = top_eigenspace(MatrixOperator(A), 6, tol=1e-8, guard_steps=0)
    assert not single.all_converged  # one vector sees one copy: the guard had to repair
    assert np.unique(np.round(single.values.numpy(), 6)).size < 6


@pytest.mark.parametrize("which", ["smallest", "both_ends", "magnitude"])
def test_block_at_the_other_ends(which):
    rng = np.random.default_rng(1)
    A = random_symmetric(spectrum("negative", 200, rng), rng)
    es = top_eigenspace(MatrixOperator(A), 5, tol=1e-6, method="block", which=which)
    check_certified_end(es, A, 5, 1e-6, which)


def test_block_on_a_hessian(small_problems):
    problem = small_problems["gpt"]
    es = top_eigenspace(problem.hessian_operator(), 8, tol=1e-8, method="block")
    check_certified(es, dense_hessian(problem).numpy(), 8, 1e-8)


def test_block_size_checks():
    A = MatrixOperator(np.diag(np.arange(20.0)))
    assert BLOCK_SIZE >= 2
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="block_size"):
            top_eigenspace(A, 2, method="block", block_size=bad)
    with pytest.raises(ValueError, match="block_size"):
        top_eigenspace(A, 2, block_size=4)  # only with method="block"


class Device(torch.Tensor):
    """A CPU tensor that stands for device memory: reading it on the host
    (bool, float, item, tolist) is recorded with its size, and ``.cpu()``
    returns a plain tensor (the host copy)."""

    reads: ClassVar[list[int]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("__bool__", "__float__", "item", "tolist", "__int__", "cpu"):
            cls.reads.append(args[0].numel())
        if name == "cpu":
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).clone()
        return super().__torch_function__(func, types, args, kwargs)


class DeviceOperator(LinearOperator):
    def __init__(self, A: np.ndarray) -> None:
        super().__init__(A.shape[0])
        self.A = torch.as_tensor(A).as_subclass(Device)

    def _matmat(self, V):
        return self.A @ V


@pytest.mark.parametrize("b", [1, 3])
def test_a_lanczos_step_reads_only_small_tensors_on_the_host(b):
    """Per step the host reads the b DGKS flags and one packed transfer of
    the small projected quantities (and, for a block, the Gram matrix of the
    second Cholesky–QR pass); never an N-sized tensor. A single-vector step
    reads nothing else (the next vector's norm comes with the transfer)."""
    rng = np.random.default_rng(2)
    n = 300
    A = random_symmetric(spectrum("spread", n, rng), rng)
    Device.reads = []
    steps = 12
    run = thick_restart_lanczos(DeviceOperator(A), 2, torch.as_tensor(rng.standard_normal((n, b))),
                                tol=0.0, basis_size=100, max_matvecs=steps * b,
                                generator=torch.Generator().manual_seed(0))
    assert run.T.shape == (steps * b, steps * b) and type(run.T) is torch.Tensor  # T lives on the host
    assert max(Device.reads) < n
    per_step = (len(Device.reads) - b) / steps  # b: the start block's column norms
    assert per_step <= (2 if b == 1 else 3), Device.reads
