"""Data-parallel Problem on 2 gloo processes (torchrun) against one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from curvprobe.results import load, without_volatile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from distributed_worker import results  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def torchrun_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CURVPROBE_DIST_TIMEOUT="120", PYTHONWARNINGS="ignore")
    return env


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    if TORCHRUN is None:
        pytest.fail("torchrun not found next to the interpreter")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2",
                           str(HERE / "distributed_worker.py"), str(out)],
                          env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_rank_returns_the_same_values(two_ranks):
    a, b = torch.load(two_ranks / "rank0.pt"), torch.load(two_ranks / "rank1.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    xr.testing.assert_identical(without_volatile(load(two_ranks / "rank0.nc")),
                                without_volatile(load(two_ranks / "rank1.nc")))


def test_two_ranks_equal_one_process(two_ranks):
    single, ds_single = results(distributed=False)
    dist = torch.load(two_ranks / "rank0.pt")
    for name in ("loss", "gradient", "hvp", "per_sample_losses", "losses_at", "subspace_g", "subspace_H",
                 "hvp_into_view", "gm_moments"):
        torch.testing.assert_close(dist[name], single[name], rtol=1e-12, atol=1e-14, msg=name)
    torch.testing.assert_close(dist["eigenvalues"], single["eigenvalues"], rtol=1e-8, atol=0)
    ds = load(two_ranks / "rank0.nc")
    ref = ds_single.drop_vars(["stage_seconds", "stage"])
    for name in ("value", "stderr", "a", "c_norm", "trace_B", "eigenvalues"):
        np.testing.assert_allclose(ds[name].values, ref[name].values, rtol=1e-8, atol=1e-300, err_msg=name)


def test_distributed_without_a_process_group_says_how():
    from conftest import mlp_problem

    problem = mlp_problem(n=8)
    with pytest.raises(RuntimeError, match="torchrun"):
        type(problem)(problem.model, problem.loss_fn, problem.inputs, problem.targets, distributed=True)
