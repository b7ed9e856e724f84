"""Bad paths and bad flags of the ``curvprobe`` command (issue #15), as a user runs it.

Each case is a subprocess of ``python -m curvprobe``: a user-caused error ends
with exit status 2 and one line on stderr, before any compute and without
writing anything; ``--debug`` adds the traceback (the user's own, for an error
raised inside their model factory).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli import SMALL, assert_one_line_error, cli, cli_many

MLP_VALIDITY = ["validity", "--model", "builtin:mlp", "--k", "16", "--sigmas", "0.01",
                "--validity-samples", "2", "--threads", "1"]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A plain file, an empty config, a text 'checkpoint' and a model factory that raises."""
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "empty.toml").write_text("")
    (tmp_path / "notes.pt").write_text("this is text, not a checkpoint\n")
    (tmp_path / "usermodels.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()\n"
        "def broken():\n"
        "    raise RuntimeError('boom from the user factory')\n")
    return {"dir": tmp_path, "file": tmp_path / "afile", "empty": tmp_path / "empty.toml",
            "text": tmp_path / "notes.pt", "factory": tmp_path / "usermodels.py"}


def test_unwritable_output_is_a_one_line_error_before_compute(env, files):
    under_file = str(files["file"] / "run")
    cases = {
        "probe under a file": (["probe", *SMALL, "--out", under_file], "cannot be created"),
        "validity under a file": ([*MLP_VALIDITY, "--out", under_file], "cannot be created"),
        "spectrum under a file": (["spectrum", "--model", "builtin:mlp", "--num-data", "16", "--top-k", "2",
                                   "--out", under_file, "--threads", "1"], "cannot be created"),
        "demo into a file": (["demo", "--quick", "--out", str(files["file"]), "--threads", "1"],
                             "is a file, not a directory"),
        "plot under a file": (["plot", str(files["file"]), "--out", under_file], None),
        "validity in /sys": ([*MLP_VALIDITY, "--out", "/sys/curvprobe-test/run"], "not writable"),
    }
    results = cli_many({name: args for name, (args, _) in cases.items()}, env)
    for name, result in results.items():
        needle = cases[name][1]
        assert_one_line_error(result, *([needle] if needle else []))
        assert "new run in" not in result.stderr and "quadratic validity" not in result.stderr, name
    assert files["file"].read_text() == "not a directory\n"
    assert not Path("/sys/curvprobe-test").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 directory")
def test_read_only_output_directory(env, files):
    locked = files["dir"] / "locked"
    locked.mkdir(mode=0o555)
    assert_one_line_error(cli([*MLP_VALIDITY, "--out", str(locked / "run")], env), "not writable")


def test_minor_bad_inputs(env, files, tmp_path):
    factory = f"module:{files['factory']}"
    module = ["probe", "--model", f"{factory}:make", "--ks", "4,8", "--sigmas", "0.01", "--dims", "1",
              "--num-data", "16", "--threads", "1"]
    cases = {
        "negative sigma": (["probe", *SMALL, "--sigmas", "-1e-3"], ("'sigmas'", "> 0")),
        "negative sigma list": (["probe", *SMALL, "--sigmas", "-1e-3,0.1"], ("'sigmas'", "> 0")),
        "threads 0": (["probe", *SMALL[:-2], "--threads", "0"], ("--threads must be >= 1",)),
        "abbreviated flag": (["probe", *SMALL, "--mc-sample", "3"], ("unrecognized arguments",)),
        "resume missing dir": (["probe", *SMALL, "--resume"], ("--resume", "no run directory")),
        "demo resume missing dir": (["demo", "--quick", "--resume"], ("--resume", "no run directory")),
        "empty config": (["probe", str(files["empty"])], ("'model' is missing", "builtin:<name>")),
        "text checkpoint": ([*module, "--checkpoint", str(files["text"])],
                            ("not a PyTorch checkpoint", "not written by torch.save")),
        "user factory raises": (["probe", "--model", f"{factory}:broken", "--ks", "4", "--sigmas", "0.01",
                                 "--threads", "1"],
                                ("broken() failed", "boom from the user factory")),
    }
    commands = {name: [*args, "--out", str(tmp_path / f"out{i}")]
                for i, (name, (args, _)) in enumerate(cases.items())}
    results = cli_many(commands, env)
    for i, (name, result) in enumerate(results.items()):
        assert_one_line_error(result, *cases[name][1])
        assert not (tmp_path / f"out{i}").exists(), name


def test_debug_shows_the_traceback_of_user_errors(env, files, tmp_path):
    factory = f"module:{files['factory']}:broken"
    results = cli_many({
        "factory": ["probe", "--model", factory, "--ks", "4", "--sigmas", "0.01", "--debug",
                    "--out", str(tmp_path / "a")],
        "config": ["probe", str(files["empty"]), "--debug", "--out", str(tmp_path / "b")],
    }, env)
    for name, result in results.items():
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" in result.stderr, name
        assert result.stderr.strip().splitlines()[-1].startswith("curvprobe: error: "), name
    user = results["factory"].stderr
    assert "usermodels.py" in user and "raise RuntimeError('boom from the user factory')" in user


def test_spectrum_caps_top_k_at_the_layer_rank(env, tmp_path):
    out = tmp_path / "spectrum"
    result = cli(["spectrum", "--model", "builtin:mlp", "--num-data", "32", "--out", str(out),
                  "--threads", "1"], env)
    assert result.returncode == 0, result.stderr
    assert "--top-k 20 capped at" in result.stderr
    assert (out / "spectra.nc").exists()


def test_help_lists_only_flags_that_apply(env):
    results = cli_many({"validity": ["validity", "--help"], "spectrum": ["spectrum", "--help"]}, env)
    for name, result in results.items():
        assert result.returncode == 0, result.stderr
        for flag in ("--dims", "--mc-samples", "--miss-bound", "--estimators"):
            assert flag not in result.stdout, (name, flag)
        assert "TOML config" in result.stdout
    assert "--validity-samples" in results["validity"].stdout
    assert "--sigmas" not in results["spectrum"].stdout
