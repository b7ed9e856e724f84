"""Progress of ``curvprobe validity`` (issue #15): a long sweep (``--k 100000``) is not silent.

Without a terminal (a log file, a batch job, this subprocess) a line per
finished batch of draws goes to stderr; on a terminal a bar counts the samples
of every pass over the data, whose total the sweep reaches exactly.
"""

from __future__ import annotations

import re

import pytest
from test_cli import cli

from curvprobe.app import _progress
from curvprobe.criteria.validity import quadratic_validity
from curvprobe.results import load

from conftest import mlp_problem

VALIDITY = ["validity", "--model", "builtin:mlp", "--k", "40", "--sigmas", "0.001,0.01,0.1",
            "--validity-samples", "5", "--point-batch", "2", "--threads", "1"]


def test_validity_logs_each_finished_batch_of_draws(env, tmp_path):
    result = cli([*VALIDITY, "--out", str(tmp_path / "v")], env)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("validity: ")]
    assert [re.match(r"validity: (\d+)/5 draws at every σ \(\d+ s\)$", ln).group(1) for ln in lines] \
        == ["2", "4", "5"], result.stderr
    attrs = load(tmp_path / "v" / "validity.nc").attrs
    assert re.fullmatch(r"[0-9a-f]{64}", attrs["weights_sha256"])  # the built-in weights
    assert attrs["model_source"] == "builtin:mlp"


def test_quiet_validity_prints_no_progress(env, tmp_path):
    result = cli([*VALIDITY, "--out", str(tmp_path / "v"), "--quiet"], env)
    assert result.returncode == 0, result.stderr
    assert "draws at every σ" not in result.stderr


@pytest.mark.parametrize(("draws", "batch", "sigmas"), [(5, 2, 3), (4, 4, 1), (3, 8, 2)])
def test_draw_log_reports_batches_in_order(draws, batch, sigmas):
    said: list[str] = []
    log = _progress.DrawLog(said.append, "v", draws=draws, batch=batch, num_sigmas=sigmas)
    for s0 in range(0, draws, batch):
        for _ in range(sigmas):
            log(min(s0 + batch, draws) - s0)
    expected = [min(s, draws) for s in range(batch, draws + batch, batch)]
    assert [int(line.split()[1].split("/")[0]) for line in said] == expected


def test_sample_count_reaches_the_bar_total():
    """The bar's total (2 + batches · (1 + #σ) passes over k samples) is what the sweep evaluates."""
    problem = mlp_problem(n=30, batch_size=7)
    k, draws, batch, sigmas = 23, 5, 2, [1e-3, 1e-2, 1e-1]
    seen: list[int] = []
    with _progress.counting(problem, on_samples=seen.append):
        quadratic_validity(problem, sigmas, k=k, mc_samples=draws, point_batch=batch)
    passes = 2 + -(-draws // batch) * (1 + len(sigmas))
    assert sum(seen) == passes * k
    assert "local_chunks" not in problem.__dict__  # restored
