"""``curvprobe demo --resume`` after a kill: finished stages and parts are kept, the final
files are those of a whole demo (uses the real model cache, as ``test_demo_quick``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from curvprobe.app.config import load_config
from curvprobe.results import load


@pytest.mark.slow  # two quick demos (R = 32 orderings): CI runs it in make test-slow
def test_demo_resume_after_kill(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "CURVPROBE_PART_DELAY"}
    command = [sys.executable, "-m", "curvprobe", "demo", "--quick", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, env={**env, "CURVPROBE_PART_DELAY": "1.5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while not (out / "parts" / "fullspace.nc").exists():  # stage 3's first part (of two, pooled)
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the demo never wrote its first part"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "stabilization.nc").exists() and not (out / "summary.md").exists()
    kept = {p: p.stat().st_mtime_ns for p in [out / "validity.nc", *(out / "parts").glob("*.nc")]}

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr
    result = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    assert "Fitted slope" in result.stdout
    for path, mtime in kept.items():  # finished stages and parts were kept, not recomputed
        assert path.stat().st_mtime_ns == mtime, path
    for name in ("stabilization.nc", "validity.nc", "mc_convergence.nc", "summary.md", "config.toml"):
        assert (out / name).exists(), name
    assert len(list(out.glob("*.png"))) >= 5
    ds = load(out / "stabilization.nc")
    assert ds.sizes["k"] >= 12 and list(ds["dim"].values) == [1, 4, 16]
    assert load_config(out / "config.toml", required=()).validity  # the demo ran the sweep

    again = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout  # a finished demo: summary and figures kept
