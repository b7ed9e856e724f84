"""`curvprobe density` as a user runs it, and the density figure."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from curvprobe import MatrixOperator, spectral_density
from curvprobe.app.plots import plot_spectral_density
from curvprobe.results import load


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curvprobe", *args], env=env, capture_output=True,
                          text=True, timeout=240)


def test_density_command_writes_the_density_and_its_figure(env, tmp_path):
    out = tmp_path / "density"
    result = cli(["density", "--model", "builtin:mlp", "--num-data", "64", "--probes", "3", "--steps", "20",
                  "--out", str(out)], env)
    assert result.returncode == 0, result.stderr
    ds = load(out / "density.nc")
    assert ds.sizes["probe"] == 3 and ds.sizes["step"] == 20
    assert ds.attrs["operator"] == "hessian" and ds.attrs["num_matvecs"] == 60
    assert abs(float(ds["weight"].sum()) - 1) < 1e-12
    assert abs(float(np.trapezoid(ds["density"].values, ds["grid"].values)) - 1) < 1e-2
    assert (out / "density.png").stat().st_size > 10_000
    assert "density.nc" in result.stdout
    again = cli(["density", "--model", "builtin:mlp", "--num-data", "64", "--out", str(out)], env)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    ggn = cli(["density", "--model", "builtin:mlp", "--num-data", "64", "--probes", "2", "--steps", "10",
               "--operator", "ggn", "--out", str(tmp_path / "ggn")], env)
    assert ggn.returncode == 0, ggn.stderr
    nodes = load(tmp_path / "ggn" / "density.nc")["node"].values
    assert nodes.min() > -1e-6 * np.abs(nodes).max()  # the GGN is PSD


def test_density_figure_with_a_dense_spectrum():
    rng = np.random.default_rng(0)
    lam = np.r_[np.geomspace(30, 1, 5), rng.uniform(-0.1, 0.2, 295)]
    Q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    sd = spectral_density(MatrixOperator(torch.as_tensor((Q * lam) @ Q.T)), num_probes=4, lanczos_steps=40)
    fig = plot_spectral_density(sd.to_dataset(), eigenvalues=lam)
    assert "W₁(SLQ, dense) / spectral width" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_lines()) == 3
    linear = plot_spectral_density(sd.to_dataset(), log=False)
    assert linear.axes[0].get_yscale() == "linear"
