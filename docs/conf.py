"""Sphinx configuration of the pyro_dgmm documentation.

Build (offline, warnings as errors) from the repository root::

    make docs
    # or: .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing here needs the network: MathJax is loaded by the reader's browser,
not at build time, and no intersphinx inventories are fetched.

Two directives are defined here:

``.. tutorial:: 01_quickstart.py``
    renders a tutorial from its jupytext percent source in ``tutorials/``
    without executing it: markdown cells as MyST markdown, code cells as
    Python code blocks.
``.. benchmark-results::``
    renders every ``benchmarks/results/*.json`` (``{"meta": ..., "rows":
    [...]}``) as a table, with the script that produced it.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from docutils import nodes
from docutils.utils import new_document
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
TUTORIALS = ROOT / "tutorials"
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))  # document the working tree, installed or not
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro_dgmm  # noqa: E402

project = "pyro_dgmm"
author = "pyro_dgmm contributors"
copyright = "pyro_dgmm contributors"
release = version = pyro_dgmm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False

try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover - the docs extra installs furo
    html_theme = "alabaster"
html_title = f"pyro_dgmm {release}"
html_static_path: list[str] = []


# ------------------------------------------------------------- tutorials
RUN_NOTE = (
    "*Run it:* {{download}}`{name} <../tutorials/{name}>` is a script and a notebook source "
    "(jupytext percent format). `python tutorials/{name}` runs it in full and saves its "
    "pictures in the working directory; with the environment variable `CI` set it runs a "
    "quick smoke version. `python tutorials/make_notebooks.py` writes the notebooks."
)


def tutorial_markdown(path: Path, *, run_note: bool = True) -> str:
    """MyST markdown for a jupytext percent script: markdown cells as they
    are, code cells as fenced Python blocks (nothing is executed); with
    ``run_note``, a line on how to run it follows the title."""
    import jupytext

    notebook = jupytext.read(path, fmt="py:percent")
    parts = []
    for cell in notebook.cells:
        source = cell.source.strip("\n")
        if not source.strip():
            continue
        if cell.cell_type == "markdown":
            if run_note and not parts and source.startswith("# "):
                title, _, rest = source.partition("\n")
                source = f"{title}\n\n{RUN_NOTE.format(name=path.name)}\n{rest}"
            parts.append(source)
        else:
            parts.append(f"```python\n{source}\n```")
    return "\n\n".join(parts) + "\n"


class TutorialDirective(SphinxDirective):
    """``.. tutorial:: NN_name.py``: render ``tutorials/NN_name.py``."""

    required_arguments = 1
    has_content = False

    def run(self):
        from myst_parser.parsers.sphinx_ import MystParser

        path = TUTORIALS / self.arguments[0]
        if not path.is_file():
            raise self.error(f"no tutorial source {path}")
        self.env.note_dependency(str(path))
        document = new_document(str(path), self.state.document.settings)
        MystParser().parse(tutorial_markdown(path), document)
        return list(document.children)


# ------------------------------------------------------------ benchmarks
def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _script_for(stem: str) -> str | None:
    """The benchmark script that writes ``results/<stem>.json``."""
    scripts = sorted(BENCHMARKS.glob("*.py"))
    for script in scripts:
        if f'"{stem}"' in script.read_text(encoding="utf-8"):
            return script.name
    prefixes = [s for s in scripts if stem.startswith(s.stem)]
    return max(prefixes, key=lambda s: len(s.stem)).name if prefixes else None


def _table(columns: list[str], rows: list[dict]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(columns))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in columns)
    head, body = nodes.thead(), nodes.tbody()
    group += head
    group += body

    def add_row(parent, values):
        row = nodes.row()
        for value in values:
            entry = nodes.entry()
            entry += nodes.paragraph(text=value)
            row += entry
        parent += row

    add_row(head, columns)
    for record in rows:
        add_row(body, [_cell(record.get(column, "")) for column in columns])
    return table


class BenchmarkResultsDirective(SphinxDirective):
    """``.. benchmark-results::``: every results JSON as a titled table."""

    has_content = False

    def run(self):
        output = []
        for path in sorted((BENCHMARKS / "results").glob("*.json")):
            self.env.note_dependency(str(path))
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data.get("rows", []) if isinstance(data, dict) else data
            meta = data.get("meta", {}) if isinstance(data, dict) else {}
            section = nodes.section(ids=[nodes.make_id(f"results-{path.stem}")])
            section += nodes.title(text=path.name)
            script = _script_for(path.stem)
            source = f"written by benchmarks/{script}; " if script else ""
            setting = ", ".join(f"{k} {v}" for k, v in meta.items())
            section += nodes.paragraph(text=f"{source}{setting}")
            if rows and all(isinstance(r, dict) for r in rows):
                # rows of different kinds (say, per-method and per-horizon
                # rows) go to separate tables, each with its own columns
                groups: dict[tuple, list[dict]] = {}
                for record in rows:
                    groups.setdefault(tuple(record), []).append(record)
                for columns, records in groups.items():
                    section += _table(list(columns), records)
            else:
                section += nodes.literal_block(text=json.dumps(data, indent=1))
            output.append(section)
        return output


# --------------------------------------------- module pages: purpose, limits, API
def _drop_module_docstring(app, what, name, obj, options, lines):
    """A module page shows the module docstring once, above its "Limits"
    section (``automodule`` without ``:members:``); the second
    ``automodule`` (with ``:members:``) lists the API only."""
    if what == "module" and options.get("members"):  # [] without :members:, ALL with it
        lines.clear()


def setup(app):
    app.add_directive("tutorial", TutorialDirective)
    app.add_directive("benchmark-results", BenchmarkResultsDirective)
    app.connect("autodoc-process-docstring", _drop_module_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
