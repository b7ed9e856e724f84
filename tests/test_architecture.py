"""The package's layering rules, checked on its source (docs/architecture.md).

Every import counts, at any level (lazy imports inside functions and
``TYPE_CHECKING`` blocks included): an import cycle through a function body is
still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "curvprobe"
REPO = PACKAGE.parent

# layer -> layers it may import (besides itself and the package's top-level helpers)
ALLOWED = {
    "core": set(),
    "linalg": {"core"},
    "criteria": {"core", "linalg"},
    "spectral": {"core", "linalg"},
    "zoo": {"core"},
    "optim": {"core", "linalg", "spectral"},
    "app": {"core", "linalg", "criteria", "spectral", "zoo", "optim"},
}
TOP_LEVEL = {"curvprobe._version", "curvprobe._threads", "curvprobe._compat", "curvprobe.results",
             "curvprobe.testing"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str]]:
    """``(imported module, imported name)`` for every curvprobe import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "curvprobe":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((full, "") if full in modules else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "curvprobe"]
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m, _ in _imports(path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_cycles(graph):
    # a module is on a cycle if it can reach itself
    def reaches(start: str) -> bool:
        seen, stack = set(), list(graph[start])
        while stack:
            node = stack.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                stack += graph.get(node, ())
        return False

    assert [m for m in graph if reaches(m)] == []


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    bad = [(name, module, imported) for name, path in modules.items()
           for module, imported in _imports(path, modules)
           if imported.startswith("_") and not imported.startswith("__")]
    assert bad == []


def test_layers_import_only_the_layers_below(graph):
    def layer(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None

    bad = []
    for name, targets in graph.items():
        own = layer(name)
        if own is None:
            continue
        for target in targets:
            if target in TOP_LEVEL:
                continue
            theirs = layer(target)
            # the package root re-exports every layer: a layer importing it imports them all
            if theirs is None or (theirs != own and theirs not in ALLOWED[own]):
                bad.append((name, target))
    assert bad == []


def test_docstrings_cite_only_files_the_repository_holds():
    cited = re.compile(r"\b((?:docs|examples|benchmarks|notebooks)/[\w./-]+\.(?:md|toml|py|ipynb))")
    missing = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "DESIGN.md" in text:
            missing.append((path.name, "DESIGN.md"))
        missing += [(path.name, ref) for ref in cited.findall(text) if not (REPO / ref).exists()]
    assert missing == []


def test_functions_are_short_or_say_why():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if length > 80 and "longer than 80 lines" not in doc:
                    long.append((path.name, node.name, length))
    assert long == []
