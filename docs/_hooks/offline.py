"""MkDocs hook: an offline site with the committed notebooks rendered in it.

- Serves MathJax 3 (``tex-svg.js``, self-contained SVG output, plus the TeX
  extensions its autoloader may request) from the ``django-static-mathjax``
  package — a plain copy of MathJax on PyPI — instead of a CDN.
- Adds ``notebooks/*.ipynb`` from the repository root as documentation pages
  before ``mkdocs-jupyter`` converts them (never executed at build time).
- Strips the CDN MathJax 2 loader and the mermaid loader that nbconvert's
  template puts in every notebook page (our MathJax 3 typesets notebooks too).
- Drops the Sphinx role prefixes (``:func:``, ``:class:``, …) that some
  docstrings carry, which Markdown would otherwise print literally.
- Fills the command-line page from the code: every config key from
  ``curvprobe.app.config.FIELDS``, the ``--help`` of every ``curvprobe`` command
  from its argparse parser, and a complete TOML example (``examples/probe.toml``
  if it exists, else one generated from ``FIELDS``), checked by loading it with
  ``curvprobe.app.config.load_config``. A key missing from the example fails the
  build.
- Fails the build if any page or stylesheet still loads a remote asset.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

MATHJAX_DIST = "django-static-mathjax"
MATHJAX_PREFIX = "mathjax/static/mathjax/"
MATHJAX_FILES = re.compile(r"^(es5/tex-svg\.js|es5/input/tex/extensions/[\w-]+\.js|LICENSE)$")
MATHJAX_DEST = "assets/mathjax/"

# nbconvert's template: <script src="https://cdnjs…/mathjax/2.7.7/…"></script>, its
# text/x-mathjax-config block, and the module script that imports mermaid on demand
_NOTEBOOK_REMOTE = [
    re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S),
    re.compile(r"<script type=\"module\">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>", re.S),
]
# what would make a browser fetch something from another host
_REMOTE_ASSET = [
    re.compile(r"<script\b[^>]*\bsrc=[\"']?(?:https?:)?//", re.I),
    re.compile(r"<link\b[^>]*\bhref=[\"']?(?:https?:)?//[^>]*>", re.I),
    re.compile(r"<(?:img|iframe|source|video|audio)\b[^>]*\bsrc=[\"']?(?:https?:)?//", re.I),
    re.compile(r"@import\s+(?:url\()?[\"']?(?:https?:)?//", re.I),
    re.compile(r"url\(\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"import\(\s*[\"'](?:https?:)?//", re.I),
]


def _mathjax_files(config) -> list[File]:
    try:
        dist = importlib.metadata.distribution(MATHJAX_DIST)
    except importlib.metadata.PackageNotFoundError as err:
        raise PluginError(f"{MATHJAX_DIST} is not installed: "
                          "run `make docs` (pip install -e '.[docs]')") from err
    out = []
    for entry in dist.files or []:
        rel = str(entry).replace("\\", "/")
        if not rel.startswith(MATHJAX_PREFIX):
            continue
        inner = rel[len(MATHJAX_PREFIX):]
        if not MATHJAX_FILES.match(inner):
            continue
        dest = MATHJAX_DEST + inner.removeprefix("es5/")
        out.append(File.generated(config, dest, abs_src_path=str(dist.locate_file(entry))))
    if not any(f.src_uri.endswith("tex-svg.js") for f in out):
        raise PluginError(f"{MATHJAX_DIST} does not contain es5/tex-svg.js")
    return out


@event_priority(100)  # before mkdocs-jupyter wraps the .ipynb files
def on_files(files: Files, config) -> Files:
    for f in _mathjax_files(config):
        files.append(f)
    root = Path(config.config_file_path).parent
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{nb.name}", src_dir=str(root), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files


_SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):(<code>)~?")


log = logging.getLogger("mkdocs.hooks.curvprobe")

CONFIG_FIELDS_MARK = "<!-- curvprobe:config-fields -->"
CLI_HELP_MARK = "<!-- curvprobe:cli-help -->"
TOML_EXAMPLE_MARK = "<!-- curvprobe:toml-example -->"
# values for the keys that have no default, in the generated example
EXAMPLE_VALUES = {"model": "builtin:tiny-gpt", "ks": [16, 32, 64, 128, 256], "sigmas": [0.001, 0.01]}


def _md_cell(text: str) -> str:
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", " ")


def _default_text(field) -> str:
    if field.required:
        return "*(required)*"
    value = field.default
    if isinstance(value, (list, tuple)):
        return "`" + ",".join(str(v) for v in value) + "`"
    if value == "":
        return "`\"\"`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def _config_table() -> str:
    from curvprobe.app.config import FIELDS, describe

    rows = ["| key | flag | value | default | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        rows.append(f"| `{f.name}` | `{f.flag}` | {_md_cell(describe(f))} | {_default_text(f)} | "
                    f"{_md_cell(f.help)}{' (a path)' if f.path else ''} |")
    return "\n".join(rows)


def _find_parser() -> argparse.ArgumentParser:
    import curvprobe.app.cli as cli

    for name in ("build_parser", "make_parser", "get_parser", "create_parser", "parser"):
        obj = getattr(cli, name, None)
        if isinstance(obj, argparse.ArgumentParser):
            return obj
        if callable(obj):
            parser = obj()
            if isinstance(parser, argparse.ArgumentParser):
                return parser
    raise LookupError("curvprobe.app.cli has no build_parser()/make_parser() returning an ArgumentParser")


def _help_sections() -> str:
    parser = _find_parser()
    parser.prog = "curvprobe"
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"  # argparse wraps to the terminal: make the page reproducible
    try:
        blocks = [("curvprobe --help", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    sub.prog = f"curvprobe {name}"
                    blocks.append((f"curvprobe {name} --help", sub.format_help()))
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    out = []
    for title, text in blocks:
        out.append(f"### `{title}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(out)


def _toml_example(root: Path) -> str:
    from curvprobe.app.config import FIELDS, load_config, toml_value

    example = root / "examples" / "probe.toml"
    if example.is_file():
        text = example.read_text(encoding="utf-8")
        source = "examples/probe.toml"
    else:
        lines = ["# Every key of a probe configuration (curvprobe.app.config.FIELDS), with its default",
                 "# unless the key is required. Flags on the command line override the file."]
        for f in FIELDS:
            if f.required and f.name not in EXAMPLE_VALUES:
                raise PluginError(f"docs hook: no example value for the required config key '{f.name}'")
            value = EXAMPLE_VALUES[f.name] if f.required else f.default
            lines.append(f"\n# {f.help}")
            lines.append(f"{f.name} = {toml_value(list(value) if isinstance(value, tuple) else value)}")
        text = "\n".join(lines) + "\n"
        source = "generated from curvprobe.app.config.FIELDS"
    import tomllib

    keys = set(tomllib.loads(text))
    missing = [f.name for f in FIELDS if f.name not in keys]
    if missing:
        log.warning(f"the TOML example ({source}) does not set {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except Exception as err:  # any failure is a docs error
            raise PluginError(f"the TOML example ({source}) does not load: {err}") from err
    return f"```toml\n{text.rstrip()}\n```\n\n<small>Source: {source}.</small>"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CONFIG_FIELDS_MARK in markdown:
        markdown = markdown.replace(CONFIG_FIELDS_MARK, _config_table())
    if CLI_HELP_MARK in markdown:
        try:
            helps = _help_sections()
        except (ImportError, LookupError) as err:
            log.warning(f"cannot render the command-line help: {err}")
            helps = f"!!! warning\n    The command-line help could not be generated: {err}\n"
        markdown = markdown.replace(CLI_HELP_MARK, helps)
    if TOML_EXAMPLE_MARK in markdown:
        markdown = markdown.replace(TOML_EXAMPLE_MARK,
                                    _toml_example(Path(config.config_file_path).parent))
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    return _SPHINX_ROLE.sub(r"\1", html)


def on_post_page(output: str, page, config) -> str:
    if page.file.src_uri.endswith(".ipynb"):
        for pattern in _NOTEBOOK_REMOTE:
            output = pattern.sub("", output)
    return output


def on_post_build(config) -> None:
    site = Path(config.site_dir)
    offenders = []
    for path in site.rglob("*"):
        if path.suffix not in (".html", ".css") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in _REMOTE_ASSET:
            m = pattern.search(text)
            if m:
                offenders.append(f"{path.relative_to(site)}: {m.group(0)[:120]!r}")
    if offenders:
        raise PluginError("the site loads remote assets (it must work offline):\n  " + "\n  ".join(offenders))
