"""``curvprobe --help`` is fast: it does not import torch, numpy or xarray (issue #15).

The package's public names are imported on first use (PEP 562), and the
parser reads only the torch-free config and estimator registry. Each check is
a subprocess, as a user runs the command; times are not asserted (a loaded
machine would make them flaky), the heavy modules being absent is.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import curvprobe

HEAVY = ("torch", "numpy", "xarray", "scipy", "matplotlib")

_REPORT_MODULES = (
    "import runpy, sys\n"
    "sys.argv = ['curvprobe', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('curvprobe', run_name='__main__', alter_sys=True)\n"
    "except SystemExit:\n"
    "    pass\n"
    "heavy = {heavy!r}\n"
    "print('LOADED', *sorted(m for m in heavy if m in sys.modules))\n"
)


def _loaded(args: list[str]) -> list[str]:
    """The heavy modules in ``sys.modules`` after ``python -m curvprobe *args`` returns."""
    code = _REPORT_MODULES.format(heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("LOADED"))
    return line.split()[1:]


@pytest.mark.parametrize("args", [["--help"], ["probe", "--help"], ["validity", "--help"],
                                  ["demo", "--help"], ["plot", "--help"], ["--version"]])
def test_help_imports_no_heavy_module(args):
    assert _loaded(args) == [], f"curvprobe {' '.join(args)} imported heavy modules"


def test_help_prints_usage_and_exits_0():
    result = subprocess.run([sys.executable, "-m", "curvprobe", "probe", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: curvprobe probe" in result.stdout


def test_importtime_of_help_has_no_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "curvprobe", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "curvprobe.app.cli" in imported
    assert not imported & set(HEAVY)


def test_import_curvprobe_is_light_and_sets_blas_threads():
    code = ("import os, sys; os.environ.pop('OPENBLAS_NUM_THREADS', None); import curvprobe; "
            "print(os.environ.get('OPENBLAS_NUM_THREADS'), 'torch' in sys.modules)")
    env_code = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert env_code.stdout.split() == ["1", "False"], env_code.stderr


def test_every_public_name_resolves_lazily():
    for name in curvprobe.__all__:
        assert getattr(curvprobe, name) is not None, name
    assert set(dir(curvprobe)) >= set(curvprobe.__all__)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        curvprobe.not_a_name  # noqa: B018


def test_public_names_in_a_fresh_process():
    code = ("from curvprobe import *; import curvprobe, curvprobe.criteria as c; "
            "assert stabilization is c.stabilization is curvprobe.criteria.sweep.stabilization; "
            "assert Problem.__module__ == 'curvprobe.core.problem'; "
            "assert curvprobe.linalg.top_eigenspace is top_eigenspace; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_moved_module_paths_still_import_with_a_warning():
    """The 0.1 module paths (curvprobe._compat) work with the lazy package: a fresh process."""
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    from curvprobe.problem import Problem\n"
            "    import curvprobe.plots as old_plots\n"
            "import curvprobe\n"
            "assert Problem is curvprobe.Problem\n"
            "assert old_plots.plot_validity is curvprobe.app.plots.plot_validity\n"
            "print(sorted({str(w.message).split(' moved')[0] for w in caught\n"
            "              if issubclass(w.category, DeprecationWarning)}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['curvprobe.plots', 'curvprobe.problem']"


def test_info_still_lists_the_blas_thread_pool(env):
    """``info`` loads the BLAS itself now that importing curvprobe does not (threadpoolctl lists
    only loaded libraries), so the one-thread BLAS limit stays visible."""
    result = subprocess.run([sys.executable, "-m", "curvprobe", "info"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pools = [line for line in result.stdout.splitlines() if line.startswith("thread pool:")]
    assert any("(blas)" in line and "num_threads=1" in line for line in pools), result.stdout
