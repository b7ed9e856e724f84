"""The documentation site covers the package: every public module has an API
page rendered by mkdocstrings, every top-level name is in the API overview,
and every page is in the navigation. (``make docs`` builds the site with
``--strict``; these checks need no docs dependencies and run in ``make test``.)
"""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import curvprobe

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"


def _public_modules() -> list[str]:
    """Dotted names of curvprobe's public modules, found without importing them."""
    out = []
    for info in pkgutil.walk_packages(curvprobe.__path__, prefix="curvprobe."):
        if not info.ispkg and not any(part.startswith("_") for part in info.name.split(".")):
            out.append(info.name)
    return sorted(out)


def _directives() -> set[str]:
    found = set()
    for page in API.glob("*.md"):
        found.update(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M))
    return found


def test_every_public_module_has_an_api_page():
    missing = [m for m in _public_modules() if m not in _directives()]
    assert not missing, f"modules without a `::: module` page in docs/api/: {missing}"


def test_every_top_level_name_is_in_the_api_overview():
    overview = (API / "index.md").read_text(encoding="utf-8")
    missing = [name for name in curvprobe.__all__ if name != "__version__" and f"`{name}`" not in overview]
    assert not missing, f"names of curvprobe.__all__ missing from docs/api/index.md: {missing}"


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "_hooks" not in p.parts]
    notebooks = [f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")]
    missing = [p for p in pages + notebooks if p not in config]
    assert not missing, f"pages missing from the nav of mkdocs.yml: {missing}"
