"""Execute every notebook in notebooks/ top to bottom with nbclient.

Run with ``make test-notebooks`` (``pytest tests/test_notebooks.py -m notebooks``).
The default suite (``make test``) collects these tests but skips them unless
the ``notebooks`` marker is selected, because together they take minutes.

The kernel is the interpreter running pytest: a kernelspec named
``curvprobe`` is written to a temporary ``JUPYTER_PATH`` so that no
user-level ``python3`` kernel from another environment is picked up. The
built-in model is trained and cached once (``$CURVPROBE_CACHE``, default
``~/.cache/curvprobe``) before the first notebook runs, so the notebooks'
own run times do not include training.

To refresh the committed outputs (after editing a notebook)::

    python tests/test_notebooks.py --write            # all notebooks
    python tests/test_notebooks.py --write 03_property_tests

Each run prints the wall time of every notebook; the budget is 90 s per
notebook on 2 free CPU cores (``NOTEBOOK_BUDGET_SECONDS``), checked only when
``CURVPROBE_NOTEBOOK_BUDGET=1`` because a loaded machine is slower.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "curvprobe"
NOTEBOOK_BUDGET_SECONDS = 90.0
CELL_TIMEOUT_SECONDS = 900


def _write_kernelspec(jupyter_path: Path) -> None:
    """A kernelspec ``curvprobe`` that starts ``sys.executable -m ipykernel_launcher``."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(str(jupyter_path / "kernels" / KERNEL_NAME),
                      overrides={"display_name": "curvprobe (this environment)"})


def execute(path: Path, *, write: bool = False) -> float:
    """Run the notebook at ``path`` in a fresh kernel; return its wall time in seconds.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing
    cell. With ``write=True`` the executed notebook (outputs included) replaces
    the file.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = tmp + (os.pathsep + old if old else "")
        os.environ.setdefault("OMP_NUM_THREADS", "2")
        try:
            _write_kernelspec(Path(tmp))
            client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_SECONDS,
                                    resources={"metadata": {"path": str(path.parent)}},
                                    record_timing=False)
            start = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - start
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
    if write:
        # keep the committed file kernel-neutral
        nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                     "name": "python3"}
        nbformat.write(nb, path)
    return seconds


def _warm_model_cache() -> None:
    from curvprobe.zoo.models import pretrained

    pretrained("tiny-gpt", progress=False)


@pytest.fixture(scope="module")
def warm_cache(request):
    markexpr = request.config.getoption("markexpr") or ""
    if "notebooks" not in markexpr or "not notebooks" in markexpr:
        pytest.skip("notebook tests run only when selected: make test-notebooks "
                    "(pytest tests/test_notebooks.py -m notebooks)")
    pytest.importorskip("nbclient", reason="needs the notebooks extra: pip install -e '.[notebooks]'")
    pytest.importorskip("ipykernel", reason="needs the notebooks extra: pip install -e '.[notebooks]'")
    _warm_model_cache()


def test_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_quickstart", "02_subspace_vs_full", "03_property_tests", "04_estimators",
                     "05_spectral_core", "06_optimizer"], names


def test_notebooks_are_committed_with_outputs():
    import json

    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code, f"{path.name} has no code cells"
        missing = [i for i, c in enumerate(code) if c.get("execution_count") is None]
        assert not missing, f"{path.name}: code cells {missing} were not executed before committing"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name} is committed with an error output"


@pytest.mark.notebooks
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, warm_cache):
    seconds = execute(path)
    print(f"{path.name}: {seconds:.1f} s")
    if os.environ.get("CURVPROBE_NOTEBOOK_BUDGET") == "1":
        assert seconds <= NOTEBOOK_BUDGET_SECONDS, f"{path.name} took {seconds:.0f} s"


def main(argv: list[str]) -> int:
    write = "--write" in argv
    names = [a for a in argv if not a.startswith("--")]
    chosen = [p for p in NOTEBOOKS if not names or p.stem in names or p.name in names]
    _warm_model_cache()
    for path in chosen:
        seconds = execute(path, write=write)
        print(f"{path.name}: {seconds:.1f} s{' (outputs written)' if write else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
