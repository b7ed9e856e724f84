"""docs/comparison.md: every example script prints exactly the output the page shows.

Each ```python block is run in a fresh namespace and its stdout compared with
the ```text block that follows it: the two reference defects (the power
iteration that doubles a negative eigenvalue, the trimmed-Hessian B_k that
does not decay in k) and the conventions are reproduced, not quoted.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "comparison.md"
BLOCK = re.compile(r"```python\n(.*?)```\s*```text\n(.*?)```", re.S)


def _examples() -> list[tuple[str, str]]:
    return BLOCK.findall(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_its_examples():
    examples = _examples()
    assert len(examples) == 4
    sources = "\n".join(code for code, _ in examples)
    assert "reference_power_iteration" in sources and "hess_max_seq" in sources


@pytest.mark.parametrize("index", range(4))
def test_example_prints_what_the_page_shows(index):
    code, expected = _examples()[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"docs/comparison.md example {index + 1}", "exec"), {"__name__": "__main__"})
    assert out.getvalue().rstrip() == expected.rstrip()


def test_power_iteration_defect_doubles_and_duplicates():
    """The facts the page states, checked on the example's own output."""
    code, _ = _examples()[2]
    namespace: dict = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "example 3", "exec"), namespace)
    values = namespace["values"]
    assert all(b == pytest.approx(2 * a, rel=1e-9) for a, b in itertools.pairwise(values))
    U = namespace["U"]
    assert float((U.T @ U).abs().min()) > 1 - 1e-9  # one vector, four times
    assert [round(float(x), 6) for x in namespace["es"].values] == [1.0, 0.5, 0.2, 0.1]
