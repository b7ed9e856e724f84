"""``torchrun --nproc-per-node 2 -m curvprobe probe``: equal to one process, resumable after a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from curvprobe.results import load, without_volatile

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
RUN = ["--model", "builtin:mlp", "--ks", "4,8,16,32", "--sigmas", "0.01,0.1", "--dims", "1,2",
       "--mc-samples", "8", "--validity-samples", "4", "--guard-steps", "30", "--batch-size", "7"]


def torchrun(args: list[str], env: dict[str, str], **popen) -> list[str]:
    if TORCHRUN is None:
        pytest.fail("torchrun not found next to the interpreter")
    return [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "curvprobe", *args]


def dist_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**env, "OMP_NUM_THREADS": "1", "CURVPROBE_DIST_TIMEOUT": "120", **extra}


def without_timing(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its timings and the volatile provenance attrs (when and where it ran)."""
    return without_volatile(ds.drop_vars(["stage_seconds", "stage"]))


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist-cli")
    one = subprocess.run([sys.executable, "-m", "curvprobe", "probe", *RUN, "--out", str(root / "one"),
                          "--quiet", "--threads", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(torchrun(["probe", *RUN, "--out", str(root / "two"), "--quiet"], env),
                         env=dist_env(env), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    return {"one": root / "one", "two": root / "two"}


def test_two_ranks_write_the_one_process_result(runs):
    one, two = load(runs["one"] / "stabilization.nc"), load(runs["two"] / "stabilization.nc")
    assert two.attrs["ranks"] == 2 and one.attrs["ranks"] == 1
    for name in ("value", "stderr", "a", "c_norm", "trace_B", "eigenvalues", "residuals"):
        np.testing.assert_allclose(two[name].values, one[name].values, rtol=1e-8, atol=1e-300,
                                   err_msg=name)
    assert (runs["two"] / "summary.md").exists()
    assert not list((runs["two"] / "parts").glob(".*.tmp"))


def test_two_rank_run_resumes_after_a_kill(runs, env, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(["probe", *RUN, "--out", str(out), "--quiet"], env),
                            env=dist_env(env, CURVPROBE_PART_DELAY="1.5"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    first_k = out / "parts" / "k_000004.nc"
    deadline = time.monotonic() + 300
    while not first_k.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never wrote its first k"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait(timeout=60)
    assert not (out / "stabilization.nc").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.nc")}
    assert {"validity.nc", "fullspace.nc", "k_000004.nc"} <= set(kept)
    resumed = subprocess.run(torchrun(["probe", "--resume", "--out", str(out), "--quiet"], env),
                             env=dist_env(env), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name, mtime in kept.items():
        assert (out / "parts" / name).stat().st_mtime_ns == mtime
    xr.testing.assert_identical(without_timing(load(out / "stabilization.nc")),
                                without_timing(load(runs["two"] / "stabilization.nc")))


def test_a_failing_run_names_each_rank(env, tmp_path):
    missing = tmp_path / "nowhere.py"
    result = subprocess.run(torchrun(["probe", *RUN[2:], "--model", f"module:{missing}:make",
                                      "--out", str(tmp_path / "x")], env),
                            env=dist_env(env), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("curvprobe: error")]
    assert sorted(line.split(":")[1] for line in lines) == [" error (rank 0 of 2)", " error (rank 1 of 2)"]
    assert all("nowhere.py" in line for line in lines)
    assert not (tmp_path / "x" / "config.toml").exists()
