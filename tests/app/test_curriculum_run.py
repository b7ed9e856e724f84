"""The curriculum protocol runner and ``curvprobe curriculum``: seeds in processes, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from curvprobe.app.curriculum_run import CurriculumSettings, run_curriculum
from curvprobe.app.runs import RunError
from curvprobe.results import load, without_volatile

SETTINGS = CurriculumSettings(model="mlp", ks=(4, 8, 16, 32), seeds=(0, 1), sigmas=(1e-2,), dims=(1, 2),
                              mc_samples=4, batch_size=4, validation_samples=32)
FLAGS = ["--model", "mlp", "--ks", "4,8,16,32", "--seeds", "0,1", "--sigmas", "1e-2", "--dims", "1,2",
         "--mc-samples", "4", "--batch-size", "4", "--validation-samples", "32", "--quiet"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURVPROBE_CURRICULUM")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def cli(args: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curvprobe", "curriculum", *args], env=_env(**extra),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("curriculum") / "run"
    ds = run_curriculum(SETTINGS, out, workers=2)  # the settings FLAGS give the command
    return out, ds


def _without_timing(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.drop_vars([v for v in ds.data_vars if v.startswith("seconds")])
    return without_volatile(ds)


def test_run_keeps_every_seed_with_mean_and_spread(finished):
    out, ds = finished
    assert dict(ds.sizes)["seed"] == 2 and list(ds["k"].values) == [4, 8, 16, 32]
    assert ds["value"].dims[:2] == ("seed", "k")
    xr.testing.assert_allclose(ds["seed_mean"], ds["value"].mean("seed"))
    np.testing.assert_allclose(ds["seed_std"], ds["value"].std("seed", ddof=1))
    # the protocol: measured once k + 1 samples are seen, the step that crossed it
    seen, step = ds["seen"].isel(seed=0).values, ds["step"].isel(seed=0).values
    assert (seen >= ds["k"].values + 1).all() and (seen - 4 < ds["k"].values + 1).all()
    np.testing.assert_array_equal(seen, 4 * step)
    # the seeds train different models on differently ordered samples
    assert not np.allclose(ds["validation_loss"].isel(seed=0), ds["validation_loss"].isel(seed=1))
    assert (ds["validation_loss_mean"].diff("k") < 0).all()  # training lowers the held-out loss
    assert np.isfinite(ds["value"]).all()
    assert (out / "curriculum.png").stat().st_size > 20_000
    text = (out / "summary.md").read_text()
    assert "## Criteria along training" in text and "validation loss" in text
    xr.testing.assert_identical(load(out / "curriculum.nc"), ds)


def test_python_entry_and_cli_agree_and_resume_after_a_kill(finished, tmp_path):
    reference, _ = finished
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "curvprobe", "curriculum", *FLAGS, "--out", str(out),
                             "--workers", "2"], env=_env(CURVPROBE_CURRICULUM_DELAY="1.0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    first = out / "seed_0" / "k_000008.nc"
    deadline = time.monotonic() + 240
    while not first.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run never finished its second k"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers must follow it
    proc.wait(timeout=30)
    time.sleep(2.5)
    assert not (out / "curriculum.nc").exists()
    assert not (out / "seed_0" / "k_000032.nc").exists()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("seed_*/k_*.nc")}
    result = cli(["--resume", "--out", str(out), "--workers", "2", "--quiet"])
    assert result.returncode == 0, result.stderr
    for path, mtime in kept.items():  # finished k were kept, not recomputed
        assert path.stat().st_mtime_ns == mtime
    resumed = load(out / "curriculum.nc")
    xr.testing.assert_identical(_without_timing(resumed).drop_attrs(),
                                _without_timing(load(reference / "curriculum.nc")).drop_attrs())
    assert "Criteria along training" in result.stdout


def test_refusals(finished, tmp_path):
    reference, _ = finished
    result = cli([*FLAGS, "--out", str(reference)])
    assert result.returncode == 2 and "already holds a curriculum run" in result.stderr
    result = cli(["--resume", "--out", str(reference), "--mc-samples", "8"])
    assert result.returncode == 2 and "mc_samples = 4 there, 8 now" in result.stderr
    result = cli([*FLAGS, "--out", str(tmp_path / "x"), "--estimators", "delta1,nope"])
    assert result.returncode == 2 and "unknown estimator" in result.stderr
    with pytest.raises(RunError, match="model"):
        CurriculumSettings(model="resnet")


def test_plot_command_draws_a_curriculum_result(finished, tmp_path):
    reference, _ = finished
    result = subprocess.run([sys.executable, "-m", "curvprobe", "plot", str(reference / "curriculum.nc"),
                             "--out", str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curriculum.png").stat().st_size > 20_000
