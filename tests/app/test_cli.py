"""The ``curvprobe`` command as a user runs it: subprocesses of ``python -m curvprobe``.

Everything runs on the built-in "mlp" (467 parameters, trained once per
session into a temporary ``CURVPROBE_CACHE``) with a tiny k grid. Commands
that do not depend on each other run concurrently (a few at a time) to keep
the file's wall time down; bad inputs must end with exit status 2, exactly
one line on stderr, no traceback and nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import xarray as xr

from curvprobe.app.config import ConfigError, load_config, parse_value
from curvprobe.criteria.spec import DEFAULT_ESTIMATORS, ESTIMATORS, default_estimators
from curvprobe.results import load, without_volatile

SMALL = ["--model", "builtin:mlp", "--ks", "4,8,16,32", "--sigmas", "0.01,0.1", "--dims", "1,2",
         "--mc-samples", "8", "--validity-samples", "4", "--guard-steps", "30", "--miss-bound", "0.05",
         "--threads", "1"]


# ------------------------------------------------------------------ helpers
def cli(args: list[str], env: dict[str, str], *, timeout: float = 240, **extra_env: str):
    return subprocess.run([sys.executable, "-m", "curvprobe", *args], env={**env, **extra_env},
                          capture_output=True, text=True, timeout=timeout)


def cli_many(commands: dict[str, list[str]], env: dict[str, str], workers: int = 3) -> dict:
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(cli, args, env) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def assert_one_line_error(result, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("curvprobe: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def without_timing(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its timings and the volatile provenance attrs (when and where it ran)."""
    return without_volatile(ds.drop_vars(["stage_seconds", "stage"]))


# ------------------------------------------------------------ fixtures: runs
@pytest.fixture(scope="session")
def finished_run(env, tmp_path_factory) -> Path:
    """An uninterrupted probe run from a config file plus one overriding flag."""
    root = tmp_path_factory.mktemp("finished")
    config = root / "probe.toml"
    config.write_text('model = "builtin:mlp"\nks = [4, 8, 16, 32]\nsigmas = [0.01, 0.5]\n'
                      'dims = [1, 2]\nmc_samples = 8\nvalidity_samples = 4\n'
                      'guard_steps = 30\nmiss_bound = 0.05\n')
    out = root / "run"
    result = cli(["probe", str(config), "--sigmas", "0.01,0.1", "--out", str(out), "--threads", "1"], env)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def user_files(tmp_path_factory) -> dict[str, Path]:
    """A module factory, matching and mismatching checkpoints, data, a text file."""
    root = tmp_path_factory.mktemp("user")
    (root / "usermodels.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()\n"
        "def make_training():\n"
        "    return nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.1), nn.Linear(6, 3))\n")
    gen = torch.Generator().manual_seed(0)
    good = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    torch.save(good.state_dict(), root / "good.pt")
    bad = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    torch.save(bad.state_dict(), root / "mismatch.pt")
    torch.save({"inputs": torch.randn(40, 4, generator=gen),
                "targets": torch.randint(0, 3, (40,), generator=gen)}, root / "data.pt")
    (root / "notes.txt").write_text("this is not a checkpoint\n")
    (root / "notes.pt").write_text("this is not a tensor file either\n")
    return {"dir": root, "factory": root / "usermodels.py", "good": root / "good.pt",
            "mismatch": root / "mismatch.pt", "data": root / "data.pt", "text": root / "notes.txt",
            "text_pt": root / "notes.pt"}


# -------------------------------------------------------------- the commands
def test_probe_run_writes_results_and_plots(finished_run, env):
    ds = load(finished_run / "stabilization.nc")
    assert list(ds["k"].values) == [4, 8, 16, 32]
    assert list(ds["sigma"].values) == [0.01, 0.1]  # the flag overrode the file
    assert list(ds["estimator"].values) == list(DEFAULT_ESTIMATORS)  # the registry's default, as the API
    assert bool(ds["converged"].all())
    assert float(ds["miss_probability"].max()) <= 0.05  # certified against the config's miss_bound
    assert "outside_validated_regime" in ds
    summary = (finished_run / "summary.md").read_text()
    assert summary.startswith("# curvprobe probe summary") and "miss bound" in summary
    assert load_config(finished_run / "config.toml", required=()).sigmas == (0.01, 0.1)
    timings = json.loads((finished_run / "timings.json").read_text())
    assert {"validity", "fullspace", "k_000004", "k_000032"} <= set(timings["parts"])
    assert not list((finished_run / "parts").glob("k_000004.eig.pt"))  # only the last k's vectors kept
    assert (finished_run / "parts" / "k_000032.eig.pt").exists()
    result = cli(["plot", str(finished_run), "--threads", "1"], env)
    assert result.returncode == 0, result.stderr
    for name in ("criteria_vs_k", "subspace_ratio", "gm_agreement", "stage_timings", "validity"):
        assert (finished_run / f"{name}.png").stat().st_size > 10_000


def test_resume_after_kill_equals_uninterrupted(finished_run, env, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "curvprobe", "probe", *SMALL, "--out", str(out), "--quiet"]
    proc = subprocess.Popen(args, env={**env, "CURVPROBE_PART_DELAY": "1.5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_k = out / "parts" / "k_000004.nc"
    deadline = time.monotonic() + 120
    while not first_k.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run never wrote its first k"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "stabilization.nc").exists()
    assert not (out / "parts" / "k_000032.nc").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.nc")}
    assert {"validity.nc", "fullspace.nc", "k_000004.nc"} <= set(kept)

    result = cli(["probe", "--resume", "--out", str(out), "--quiet", "--threads", "1"], env)
    assert result.returncode == 0, result.stderr
    for name, mtime in kept.items():  # finished parts were kept, not recomputed
        assert (out / "parts" / name).stat().st_mtime_ns == mtime
    session = json.loads((out / "timings.json").read_text())["sessions"][-1]
    assert set(session["skipped"]) == {n[:-3] for n in kept}
    assert "k_000032" in session["computed"]
    resumed = load(out / "stabilization.nc")
    reference = load(finished_run / "stabilization.nc")
    xr.testing.assert_identical(without_timing(resumed), without_timing(reference))


def test_independent_commands(env, user_files, tmp_path):
    spectrum_ok = True
    try:
        import curvprobe.spectral  # noqa: F401
    except ImportError:  # pragma: no cover
        spectrum_ok = False
    commands = {
        "help": ["--help"],
        "info": ["info"],
        "validity": ["validity", "--model", "builtin:mlp", "--sigmas", "1e-3,1e-2,1e-1", "--k", "64",
                     "--validity-samples", "4", "--out", str(tmp_path / "validity"), "--threads", "1"],
        "module": ["probe", "--model", f"module:{user_files['factory']}:make", "--checkpoint",
                   str(user_files["good"]), "--data", str(user_files["data"]), "--ks", "4,8,16",
                   "--sigmas", "0.01", "--dims", "1,2", "--mc-samples", "4", "--no-validity",
                   "--out", str(tmp_path / "module"), "--threads", "1"],
    }
    hf_dir = None
    try:
        from transformers import GPT2Config

        hf_dir = tmp_path / "tiny-gpt2"
        GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100, n_positions=32, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0).save_pretrained(hf_dir)
        commands["hf"] = ["probe", "--model", f"hf:{hf_dir}", "--ks", "4,8", "--sigmas", "0.01",
                          "--dims", "1,2", "--mc-samples", "4", "--no-validity", "--seq-len", "12",
                          "--out", str(tmp_path / "hf"), "--threads", "1"]
    except ImportError:  # transformers is an optional extra
        pass
    if spectrum_ok:
        commands["spectrum"] = ["spectrum", "--model", "builtin:mlp", "--num-data", "64", "--top-k", "3",
                                "--out", str(tmp_path / "spectrum"), "--threads", "1"]
    results = cli_many(commands, env)
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr)
    assert "probe" in results["help"].stdout and "demo" in results["help"].stdout
    info = results["info"].stdout
    assert "torch" in info and env["CURVPROBE_CACHE"] in info and "threads" in info
    validity = load(tmp_path / "validity" / "validity.nc")
    assert validity.attrs["k"] == 64 and validity.sizes["sigma"] == 3
    assert (tmp_path / "validity" / "validity.png").exists()
    module = load(tmp_path / "module" / "stabilization.nc")
    assert module.attrs["num_params"] == 4 * 6 + 6 + 6 * 3 + 3
    assert module.attrs["run_config"]["loss"] == "auto"
    if spectrum_ok:
        assert (tmp_path / "spectrum" / "spectra.nc").exists()
    if hf_dir is not None:  # config.json only: a randomly initialised model, with a warning
        assert "randomly initialised" in results["hf"].stderr
        hf = load(tmp_path / "hf" / "stabilization.nc")
        assert hf.attrs["model"] == "CausalLMLogits" and bool(hf["converged"].all())


# --------------------------------------------------------------- bad input
def _config_files(d: Path) -> dict[str, Path]:
    files = {
        "missing": 'model = "builtin:mlp"\nsigmas = [0.1]\n',
        "malformed": 'model = "builtin:mlp"\nks = [4, 8]\nsigmas = [0.1]\ndtype = "float16"\n',
        "unknown": 'model = "builtin:mlp"\nks = [4, 8]\nsigma = [0.1]\n',
        "broken": 'model = "builtin:mlp\nks = [4, 8\n',
    }
    out = {}
    for name, text in files.items():
        out[name] = d / f"{name}.toml"
        out[name].write_text(text)
    return out


def _out(d: Path, name: str) -> Path:
    return d / ("out-" + "".join(c if c.isalnum() else "_" for c in name))


SMALL_NO_THREADS = SMALL[:-2]


def test_bad_inputs_one_line_exit_2(env, user_files, finished_run, tmp_path):
    """The bad inputs the command must refuse, each as a real subprocess."""
    d = tmp_path
    cfg = _config_files(d)
    factory = user_files["factory"]
    module = ["--model", f"module:{factory}:make", "--data", str(user_files["data"]), "--sigmas", "0.01",
              "--dims", "1"]
    cases = {
        "missing key": (["probe", str(cfg["missing"])], ("'ks'", "missing")),
        "malformed key": (["probe", str(cfg["malformed"])], ("'dtype'", "float32, float64", "float16")),
        "unknown estimator": (["probe", *SMALL_NO_THREADS, "--estimators", "delta1,magic"],
                              ("unknown estimator 'magic'", "direct_mc")),
        "sigma <= 0": (["probe", *SMALL_NO_THREADS, "--sigmas", "0.01,-1"], ("'sigmas'", "> 0")),
        "k beyond data": (["probe", *module, "--ks", "4,64"], ("k = 64", "larger than the data", "40")),
        "checkpoint mismatch": (["probe", *module, "--ks", "4,8", "--checkpoint",
                                 str(user_files["mismatch"])],
                                ("does not match the model", "shape mismatch")),
        "not a checkpoint": (["probe", *module, "--ks", "4,8", "--checkpoint", str(user_files["text"])],
                             ("is not a PyTorch checkpoint",)),
        "training mode": (["probe", "--model", f"module:{factory}:make_training", "--data",
                           str(user_files["data"]), "--ks", "4,8", "--sigmas", "0.01"],
                          ("training mode", "Dropout", "eval()")),
    }
    commands = {name: [*args, "--out", str(_out(d, name)), "--threads", "1"]
                for name, (args, _) in cases.items()}
    reference = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()}
    commands["resume with other config"] = ["probe", *SMALL, "--sigmas", "0.01,0.2", "--resume",
                                            "--out", str(finished_run)]
    commands["existing run without resume"] = ["probe", *SMALL, "--sigmas", "0.01,0.1", "--out",
                                               str(finished_run)]
    cases["resume with other config"] = ([], ("--resume", "different config", "sigmas = [0.01, 0.1] there"))
    cases["existing run without resume"] = ([], ("already holds a run", "--resume"))
    results = cli_many(commands, env, workers=3)
    for name, result in results.items():
        assert_one_line_error(result, *cases[name][1])
        if not name.startswith(("resume", "existing")):
            assert not _out(d, name).exists(), name  # a failed command creates nothing
    after = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file()}
    assert after == reference  # the good run is untouched


def test_more_bad_inputs_in_process(env, user_files, tmp_path, monkeypatch, capsys):
    """Further refusals through the same entry point, :func:`curvprobe.app.cli.main`, in-process."""
    from curvprobe.app.cli import main

    monkeypatch.setenv("CURVPROBE_CACHE", env["CURVPROBE_CACHE"])
    d = tmp_path
    cfg = _config_files(d)
    module = ["--model", f"module:{user_files['factory']}:make", "--data", str(user_files["data"]),
              "--sigmas", "0.01", "--dims", "1", "--ks", "4,8"]
    cases = {
        "unknown key": (["probe", str(cfg["unknown"])], ("unknown config key 'sigma'", "sigmas")),
        "not toml": (["probe", str(cfg["broken"])], ("not valid TOML",)),
        "bad list": (["probe", *SMALL_NO_THREADS, "--ks", "4,eight"], ("'ks'", "list of integers")),
        "sigma = 0": (["probe", *SMALL_NO_THREADS, "--sigmas", "0"], ("'sigmas'", "> 0")),
        "k beyond num_data": (["probe", *SMALL_NO_THREADS, "--num-data", "20"],
                              ("k = 32", "larger than the data")),
        "missing checkpoint": (["probe", *module, "--checkpoint", str(d / "nope.pt")], ("does not exist",)),
        "not a data file": (["probe", *module, "--data", str(user_files["text_pt"])],
                            ("not a torch tensor file",)),
        "unknown builtin": (["probe", *SMALL_NO_THREADS, "--model", "builtin:resnet"],
                            ("unknown built-in model",)),
        "bad flag": (["probe", *SMALL_NO_THREADS, "--sigmaz", "1"], ("unrecognized arguments",)),
        "resume nothing": (["probe", "--resume", "--out", str(d / "empty")],
                           ("--resume", "no run directory")),
        "plot non-result": (["plot", str(user_files["text"])], ("not a curvprobe results file",)),
        "plot missing": (["plot", str(d / "nothing.nc")], ("does not exist",)),
    }
    for name, (args, needles) in cases.items():
        argv = args + (["--out", str(_out(d, name))] if args[0] == "probe" and "--out" not in args else [])
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("curvprobe: error: "), (name, err)
        for needle in needles:
            assert needle in lines[0], (name, needle, lines[0])
        assert not _out(d, name).exists(), name


# ------------------------------------------------------------ config parsing
def test_config_file_flags_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "probe.toml"
    path.write_text('model = "builtin:mlp"\nks = [40, 10, 20]\nsigmas = [1e-2, 1e-3]\n'
                    'data = "tokens.npy"\nestimators = ["all"]\nout = "runs/x"\n')
    cfg = load_config(path, {"mc_samples": "12", "dims": "4,1", "validity": "false", "seed": None})
    assert cfg.ks == (10, 20, 40) and cfg.sigmas == (1e-3, 1e-2) and cfg.dims == (1, 4)
    assert cfg.mc_samples == 12 and cfg.validity is False and cfg.seed == 0
    assert cfg.data == str(tmp_path / "cfg" / "tokens.npy")  # inputs: beside the config
    assert cfg.out == str(tmp_path / "runs" / "x")  # outputs: under the working directory
    assert cfg.estimators == tuple(ESTIMATORS)  # 'all'
    written = tmp_path / "resolved.toml"
    cfg.write(written)
    assert load_config(written) == cfg
    assert cfg.differences(cfg.replace(out="elsewhere")) == []
    assert cfg.differences(cfg.replace(tol=1e-2))[0][0] == "tol"


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("ks", "10,x", "list of integers"),
    ("ks", "0,5", ">= 1"),
    ("sigmas", "-1e-3", "> 0"),
    ("dtype", "float16", "float32, float64"),
    ("subspace", "sometimes", "per_k, fixed"),
    ("estimators", "gm,nope", "unknown estimator 'nope'"),
    ("mc_samples", "1", ">= 2"),
    ("model", "torchvision:resnet", "builtin:"),
    ("model", "module:pkg.mod", "module:"),
    ("device", "gpu", "cpu, cuda"),
    ("validity", "maybe", "true or false"),
    ("miss_bound", "1.5", "[0, 1)"),
    ("guard_steps", "0", ">= 1"),
])
def test_config_errors_name_key_and_accepted_values(key, value, needle):
    with pytest.raises(ConfigError) as info:
        parse_value(key, value)
    message = str(info.value)
    assert "\n" not in message and needle in message and (key in message or "estimator" in message)


def test_config_cross_key_checks():
    with pytest.raises(ConfigError, match="larger than the data"):
        load_config(None, {"model": "builtin:mlp", "ks": "10,100", "sigmas": "0.1", "num_data": "50"})
    with pytest.raises(ConfigError, match="p = 2"):
        load_config(None, {"model": "builtin:mlp", "ks": "10", "sigmas": "0.1", "p": "1",
                           "estimators": "delta1,cv_mc"})
    with pytest.raises(ConfigError, match="'model' is missing"):
        load_config(None, {"ks": "10", "sigmas": "0.1"})


def test_data_files(tmp_path):
    import numpy as np

    from curvprobe.app.sources import load_data

    ids = np.arange(30, dtype=np.int64).reshape(5, 6) % 7
    np.save(tmp_path / "ids.npy", ids)
    cfg = load_config(None, {"model": "builtin:tiny-gpt", "ks": "2", "sigmas": "0.1",
                             "data": str(tmp_path / "ids.npy")})
    rows = load_data(cfg)["ids"]  # memory-mapped, read row by row
    assert isinstance(rows.ids, np.memmap)
    assert torch.equal(rows.tensor(), torch.as_tensor(ids))
    x, y = rows[2]
    assert torch.equal(x, torch.as_tensor(ids[2, :-1])) and torch.equal(y, torch.as_tensor(ids[2, 1:]))
    np.save(tmp_path / "negative.npy", ids - 3)
    with pytest.raises(ConfigError, match=">= 0"):
        load_data(cfg.replace(data=str(tmp_path / "negative.npy")))
    np.save(tmp_path / "floats.npy", ids.astype(float))
    with pytest.raises(ConfigError, match="integers"):
        load_data(cfg.replace(data=str(tmp_path / "floats.npy")))
    torch.save(torch.as_tensor(ids)[:, :1], tmp_path / "short.pt")
    with pytest.raises(ConfigError, match=r"\(n, T\+1\)"):
        load_data(cfg.replace(data=str(tmp_path / "short.pt")))


@pytest.mark.slow
def test_demo_quick(tmp_path):
    """``curvprobe demo --quick`` end to end (uses the real model cache: tiny-gpt trains on first use)."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "CURVPROBE_PART_DELAY"}
    result = subprocess.run([sys.executable, "-m", "curvprobe", "demo", "--quick", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    assert "Fitted slope" in result.stdout
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) >= 5, pngs
    for name in ("stabilization.nc", "validity.nc", "mc_convergence.nc", "summary.md"):
        assert (out / name).exists(), name
    ds = load(out / "stabilization.nc")
    assert ds.sizes["k"] >= 12 and list(ds["dim"].values) == [1, 4, 16]
    assert bool(ds["outside_validated_regime"].any()) and not bool(ds["outside_validated_regime"].all())


def test_default_estimators_follow_p():
    cfg = load_config(None, {"model": "builtin:mlp", "ks": "4,8", "sigmas": "0.01", "p": "3"})
    assert cfg.estimators == default_estimators(3.0) and "gm" not in cfg.estimators
    with pytest.raises(ConfigError, match="p = 2 only"):
        load_config(None, {"model": "builtin:mlp", "ks": "4,8", "sigmas": "0.01", "p": "3",
                           "estimators": "gm"})


def test_a_run_that_will_not_fit_is_refused_before_any_compute(env, tmp_path):
    from curvprobe.app.runs import RunError, check_memory
    from curvprobe.app.sources import build_problem

    cfg = load_config(None, {"model": "builtin:mlp", "ks": "4,8", "sigmas": "0.01", "dims": "1,4"})
    problem = build_problem(cfg).problem
    check_memory(cfg, problem, free=2**40)  # fits
    with pytest.raises(RunError, match="basis_dtype = \"float32\""):
        check_memory(cfg, problem, free=1000)
    f32 = cfg.replace(basis_dtype="float32", basis_size=8)
    from curvprobe.linalg import eigensolver_memory

    small = eigensolver_memory(10**8, 8, torch.float32, D=4)
    assert small < eigensolver_memory(10**8, 44, torch.float64, D=4)
    check_memory(f32.replace(estimators="delta1,full_mc"), problem, free=0)  # no eigensolve: nothing to check
    args = ["probe", *SMALL, "--basis-dtype", "float32", "--basis-size", "12", "--out", str(tmp_path / "r")]
    result = cli(args, env)
    assert result.returncode == 0, result.stderr
    assert load(tmp_path / "r" / "stabilization.nc")["converged"].all()


def test_hessian_report_as_a_user_runs_it(env, tmp_path):
    out = tmp_path / "hessian"
    result = cli(["hessian", "--model", "builtin:mlp", "--num-data", "64", "--top", "4", "--bottom", "3",
                  "--layer-top", "2", "--out", str(out), "--threads", "1", "--quiet"], env)
    assert result.returncode == 0, result.stderr
    ds = load(out / "hessian.nc")
    assert ds.attrs["measurement"] == "hessian_report"
    assert ds["top_converged"].all() and ds["bottom_converged"].all()
    assert (ds["top_eigenvalue"].values[:-1] >= ds["top_eigenvalue"].values[1:]).all()
    assert float(ds["bottom_eigenvalue"].min()) <= float(ds["top_eigenvalue"].max())
    assert ds.sizes["layer"] >= 2 and ds["layer_converged"].all()
    assert "## Per-layer top eigenvalues" in (out / "summary.md").read_text()
    assert (out / "hessian.png").stat().st_size > 10_000
    again = cli(["hessian", "--model", "builtin:mlp", "--num-data", "64", "--out", str(out)], env)
    assert again.returncode == 2 and "--overwrite" in again.stderr
