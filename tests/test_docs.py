"""The documentation site covers the package: every public module has an API
page rendered by mkdocstrings, every top-level name is in the API overview,
and every page is in the navigation. (``make docs`` builds the site with
``--strict``; these checks need no docs dependencies and run in ``make test``.)
"""

from __future__ import annotations

import ast
import pkgutil
import re
import textwrap
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


def _python_snippets() -> list[tuple[str, str]]:
    """(page, code) of every ```python block of README.md and docs/**/*.md."""
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [(page.relative_to(ROOT).as_posix(), code) for page in pages
            for code in re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)]


def _saves_without_overwrite(code: str) -> list[str]:
    """Source of each curvprobe ``save(...)`` call (``torch.save`` excepted) that does not pass
    ``overwrite=True``: run twice, such a snippet raises FileExistsError after its compute."""
    bad = []
    for node in ast.walk(ast.parse(textwrap.dedent(code))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        overwrite = any(k.arg == "overwrite" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in node.keywords)
        if name == "save" and owner != "torch" and not overwrite:
            bad.append(ast.unparse(node))
    return bad


def test_the_save_check_flags_a_save_without_overwrite():
    flagged = _saves_without_overwrite('curvprobe.save(ds, "a.nc")\ntorch.save(v, h)')
    assert flagged == ["curvprobe.save(ds, 'a.nc')"]
    assert not _saves_without_overwrite('results.save(ds, "a.nc", overwrite=True)')


def test_doc_snippets_can_run_twice_in_a_row():
    snippets = _python_snippets()
    assert any("save(" in code for _, code in snippets)
    bad = [(page, call) for page, code in snippets for call in _saves_without_overwrite(code)]
    assert not bad, f"snippets whose save() refuses the file a first run wrote (pass overwrite=True): {bad}"


def test_every_referenced_image_exists_and_no_figure_is_stored_twice():
    pages = [ROOT / "README.md", *DOCS.rglob("*.md")]
    missing = [(page.name, ref) for page in pages
               for ref in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", page.read_text(encoding="utf-8"))
               if not (page.parent / ref).is_file()]
    assert not missing, f"image references without a file: {missing}"
    seen: dict[bytes, str] = {}
    copies = []
    for png in sorted(DOCS.rglob("*.png")):
        content = png.read_bytes()
        if content in seen:
            copies.append((seen[content], png.relative_to(ROOT).as_posix()))
        seen.setdefault(content, png.relative_to(ROOT).as_posix())
    assert not copies, f"the same figure stored twice (keep one, in docs/images): {copies}"
