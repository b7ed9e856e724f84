"""``curvprobe hessian`` as a user runs it: the built-in transformer (reduced flags here, the
defaults in a slow test) and the built-in MLP against its dense Hessian."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator as ScipyOperator
from scipy.sparse.linalg import eigsh

from curvprobe.app.config import load_config
from curvprobe.app.sources import build_problem
from curvprobe.linalg import trace
from curvprobe.results import load

from conftest import dense_hessian

#: the real model cache: tiny-gpt is trained on first use and cached there
REAL_ENV = {k: v for k, v in os.environ.items() if k not in ("CURVPROBE_PART_DELAY", "RANK", "WORLD_SIZE")}


def run(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curvprobe", "hessian", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def same_problem(model: str, n: int, **keys):
    """The Problem the command builds for ``--model model --num-data n`` (in this process)."""
    config = load_config(None, {"model": model, "num_data": n, **keys}, required=("model",))
    return build_problem(config.replace(ks=[n - 1])).problem


def eigsh_ends(op, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest and smallest eigenvalues by ARPACK on the operator's products,
    an eigensolver independent of curvprobe's (descending, ascending)."""
    n = op.shape[0]
    mv = lambda x: op.matvec(torch.as_tensor(x, dtype=torch.float64).reshape(-1)).numpy()  # noqa: E731
    A = ScipyOperator((n, n), matvec=mv, dtype=np.float64)
    top = eigsh(A, count, which="LA", tol=1e-6, return_eigenvectors=False)
    bottom = eigsh(A, count, which="SA", tol=1e-6, return_eigenvectors=False)
    return np.sort(top)[::-1], np.sort(bottom)


def check_outputs(out, ds) -> str:
    """The three files exist and the summary states the settings and the certificate."""
    summary = (out / "summary.md").read_text()
    assert (out / "hessian.png").stat().st_size > 10_000
    assert ds.attrs["measurement"] == "hessian_report"
    assert set(ds.attrs["products"]) == {"top", "bottom", "trace", "density", "layers"}
    assert f"{ds.attrs['trace_matvecs']} products" in summary
    assert f"{ds.sizes['probe']} probes × {ds.sizes['step']} steps" in summary
    certified = all(bool(ds[f"{part}_converged"].all()) for part in ("top", "bottom", "layer"))
    assert ("every eigenpair converged (residual within its tolerance, guard passed)" in summary) == certified
    assert ("NOT CONVERGED" in summary) == (not certified)
    return summary


def test_reduced_run_on_the_builtin_transformer(tmp_path):
    out = tmp_path / "h"
    result = run(["--model", "builtin:tiny-gpt", "--num-data", "16", "--top", "3", "--bottom", "2",
                  "--layer-top", "1", "--trace-matvecs", "12", "--density-probes", "2",
                  "--density-steps", "15", "--threads", "1", "--out", str(out)], REAL_ENV)
    assert result.returncode == 0, result.stderr
    ds = load(out / "hessian.nc")
    check_outputs(out, ds)
    assert ds.attrs["k"] == 16 and ds.sizes["layer"] == 14 and ds.sizes["probe"] == 2
    assert ds.attrs["products"]["trace"] == 12 and ds.attrs["products"]["density"] == 30
    assert ds["top_converged"].all() and ds["bottom_converged"].all() and ds["layer_converged"].all()
    problem = same_problem("builtin:tiny-gpt", 16)
    top, bottom = eigsh_ends(problem.hessian_operator(), 3)
    scale = abs(top[0])
    # certified to residual tol·s, an eigenvalue is within tol·s of the true one
    assert abs(ds["top_eigenvalue"].values - top).max() <= 2e-3 * scale
    assert abs(ds["bottom_eigenvalue"].values - bottom[:2][::-1]).max() <= 2e-3 * scale  # stored descending
    layer = "blocks.1.attn.c_v"
    block_top, _ = eigsh_ends(problem.hessian_operator(params=[f"{layer}.weight"]), 1)
    found = float(ds["layer_eigenvalue"].sel(layer=layer, layer_rank=1))
    assert found == pytest.approx(block_top[0], rel=2e-3)


def test_mlp_report_matches_its_dense_hessian(env, tmp_path, monkeypatch):
    out = tmp_path / "h"
    result = run(["--model", "builtin:mlp", "--num-data", "64", "--dtype", "float64", "--tol", "1e-8",
                  "--top", "4", "--bottom", "3", "--layer-top", "2", "--threads", "1", "--quiet",
                  "--miss-bound", "0.05", "--guard-steps", "60", "--out", str(out)], env)
    assert result.returncode == 0, result.stderr
    ds = load(out / "hessian.nc")
    check_outputs(out, ds)
    assert (ds.attrs["miss_bound"], ds.attrs["guard_steps"]) == (0.05, 60)
    assert max(ds.attrs["top_miss_probability"], ds.attrs["bottom_miss_probability"]) <= 0.05
    monkeypatch.setenv("CURVPROBE_CACHE", env["CURVPROBE_CACHE"])
    problem = same_problem("builtin:mlp", 64, dtype="float64")
    lam = torch.linalg.eigvalsh(dense_hessian(problem)).numpy()
    scale = abs(lam).max()
    assert abs(ds["top_eigenvalue"].values - lam[::-1][:4]).max() <= 1e-6 * scale
    assert abs(ds["bottom_eigenvalue"].values - lam[:3][::-1]).max() <= 1e-6 * scale  # stored descending
    assert abs(float(ds["trace"]) - lam.sum()) <= 4 * float(ds["trace_stderr"]) + 1e-9 * scale
    assert ds.attrs["not_converged"] == {"top": 0, "bottom": 0, "layers": 0}


@pytest.mark.parametrize(("flag", "value"), [("--density-probes", "0"), ("--trace-matvecs", "2"),
                                         ("--bottom-tol", "-1"), ("--layer-tol", "nan"),
                                         ("--miss-bound", "1"), ("--guard-steps", "-1")])
def test_bad_settings_are_one_line_errors(env, tmp_path, flag, value):
    result = run(["--model", "builtin:mlp", "--num-data", "16", flag, value, "--out", str(tmp_path / "h")],
                 env, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert flag in lines[0] and "Traceback" not in result.stderr


@pytest.mark.slow
def test_defaults_on_the_builtin_transformer(tmp_path):
    """The command at its defaults, as the issue's target states it: certified ends and
    layers (or NOT CONVERGED in the summary), the default settings recorded, the top
    eigenvalue confirmed by ARPACK and the trace by an independent Hutchinson estimate."""
    out = tmp_path / "h"
    result = run(["--model", "builtin:tiny-gpt", "--out", str(out)], REAL_ENV, timeout=1800)
    assert result.returncode == 0, result.stderr
    ds = load(out / "hessian.nc")
    check_outputs(out, ds)
    assert ds.attrs["k"] == 128 and ds.sizes["layer_rank"] == 2 and ds.sizes["layer"] == 14
    assert (ds.attrs["trace_matvecs"], ds.sizes["probe"], ds.sizes["step"]) == (30, 4, 40)
    problem = same_problem("builtin:tiny-gpt", 128)
    op = problem.hessian_operator()
    top, _ = eigsh_ends(op, 1)
    converged = ds["top_converged"].values
    assert abs(ds["top_eigenvalue"].values[0] - top[0]) <= 2e-3 * abs(top[0]) or not converged[0]
    check = trace(op, method="hutchinson", num_matvecs=30, seed=7)
    spread = 4 * np.hypot(float(ds["trace_stderr"]), check.stderr)
    assert abs(float(ds["trace"]) - check.value) <= spread
