"""Sphinx configuration of the pyro_dgmm documentation.

Build (offline, warnings as errors) from the repository root::

    make docs
    # or: .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing here needs the network, at build time or when reading: MathJax
3.2.2 comes from the ``sphinx-mathjax-offline`` package (the ``docs``
extra), which copies it into ``_static/mathjax/`` of the built site, and
``mathjax_path`` points there, so pages show rendered math offline (no CDN
script; tests/test_docs.py checks the built HTML); no intersphinx
inventories are fetched.

Two directives are defined here:

``.. tutorial:: 01_quickstart.py``
    renders a tutorial from its jupytext percent source in ``tutorials/``:
    markdown cells as MyST markdown, code cells as Python code blocks,
    each followed by its outputs and figures from the executed notebook
    that ``make tutorials`` writes (``tutorials/make_notebooks.py
    --execute``; smoke mode by default, ``make docs TUTORIALS=full`` for
    full runs) into ``docs/_build/executed/`` (or the folder named by the
    environment variable ``PYRO_DGMM_EXECUTED``, absolute or from the
    repository root).  A tutorial without an
    executed notebook, or whose source changed since, is rendered without
    outputs and warns (an error under ``-W``).
``.. benchmark-results::``
    renders every ``benchmarks/results/*.json`` (``{"meta": ..., "rows":
    [...]}``) as a table, with the script that produced it.
"""
from __future__ import annotations

import json
import math
import os
import re
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
    "sphinx-mathjax-offline",  # MathJax itself, served from _static/mathjax/
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

myst_enable_extensions = ["dollarmath", "amsmath"]
# relative to _static/ (sphinx-mathjax-offline copies MathJax there): never a CDN URL
mathjax_path = "mathjax/tex-chtml.js"
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
# a relative PYRO_DGMM_EXECUTED is taken from the repository root (Sphinx runs conf.py in docs/)
EXECUTED = (ROOT / os.environ.get("PYRO_DGMM_EXECUTED", DOCS / "_build" / "executed")).resolve()
RUN_NOTE = (
    "*Run it:* {{download}}`{name} <../tutorials/{name}>` is a script and a notebook source "
    "(jupytext percent format). `python tutorials/{name}` runs it in full and saves its "
    "pictures in the working directory; with the environment variable `CI` set it runs a "
    "quick smoke version. `python tutorials/make_notebooks.py` writes the notebooks."
)
MODE_NOTE = {
    "smoke": ("*The outputs on this page come from a smoke run* (`CI` set: tiny fits of a few epochs). "
              "They show the code working and the kind of tables and pictures it makes, not the "
              "results of the tutorial; `make docs TUTORIALS=full` renders the page from a full run."),
    "full": "*The outputs on this page come from a full run of the tutorial* (`make docs TUTORIALS=full`).",
}


def executed_notebook(path: Path):
    """The executed notebook of tutorial ``path`` (written by ``make
    tutorials``) and None, or None and why it cannot be used (absent, or
    executed from another version of the source)."""
    import hashlib

    import nbformat

    target = EXECUTED / f"{path.stem}.ipynb"
    if not target.is_file():
        return None, f"no executed notebook {target}: run `make tutorials` (or `make docs`)"
    notebook = nbformat.read(target, as_version=4)
    meta = notebook.metadata.get("pyro_dgmm", {})
    if meta.get("source_sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        return None, f"{target} was executed from another version of {path.name}: run `make tutorials`"
    return notebook, None


def _fence(text: str, language: str = "text") -> str:
    """A fenced block long enough not to be closed by backticks in ``text``."""
    ticks = "`" * max(3, max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


def _outputs(cell, docdir: Path) -> list[str]:
    """MyST markdown for a code cell's outputs: printed text and warnings
    as text blocks, a last value as Jupyter shows it (HTML tables as raw
    HTML), figures as images (paths relative to ``docdir``)."""
    parts = []
    for output in cell.get("outputs", []):
        kind = output["output_type"]
        if kind == "stream" and output["text"].strip():
            parts.append(_fence(output["text"]))
        elif kind in ("execute_result", "display_data"):
            data, filename = output.get("data", {}), output.get("metadata", {}).get("filename")
            if "image/png" in data and filename:
                image = os.path.relpath(EXECUTED / filename, docdir)
                parts.append(f"![{Path(filename).name}]({image})")
            elif "text/html" in data:
                html = "".join(data["text/html"])
                parts.append(f"```{{raw}} html\n<div class=\"tutorial-output\">\n{html.strip()}\n</div>\n```")
            elif "text/plain" in data:
                parts.append(_fence("".join(data["text/plain"])))
    return parts


def tutorial_markdown(path: Path, *, run_note: bool = True, executed=None, docdir: Path = DOCS) -> str:
    """MyST markdown for a jupytext percent script: markdown cells as they
    are, code cells as fenced Python blocks; with ``executed`` (the
    notebook :func:`executed_notebook` returns), each code cell is followed
    by its outputs and figures (image paths relative to ``docdir``); with
    ``run_note``, a line on how to run it follows the title."""
    import jupytext

    notebook = executed if executed is not None else jupytext.read(path, fmt="py:percent")
    note = RUN_NOTE.format(name=path.name)
    if executed is not None:
        note += "\n\n" + MODE_NOTE[executed.metadata["pyro_dgmm"]["mode"]]
    parts = []
    for cell in notebook.cells:
        source = cell.source.strip("\n")
        if not source.strip():
            continue
        if cell.cell_type == "markdown":
            if run_note and not parts and source.startswith("# "):
                title, _, rest = source.partition("\n")
                source = f"{title}\n\n{note}\n{rest}"
            parts.append(source)
        else:
            parts.append(f"```python\n{source}\n```")
            parts += _outputs(cell, docdir)
    return "\n\n".join(parts) + "\n"


class TutorialDirective(SphinxDirective):
    """``.. tutorial:: NN_name.py``: render ``tutorials/NN_name.py`` with the
    outputs of its executed notebook."""

    required_arguments = 1
    has_content = False

    def run(self):
        from myst_parser.parsers.sphinx_ import MystParser
        from sphinx.util import logging

        path = TUTORIALS / self.arguments[0]
        if not path.is_file():
            raise self.error(f"no tutorial source {path}")
        self.env.note_dependency(str(path))
        executed, problem = executed_notebook(path)
        # noted even when absent: Sphinx then reads the page again on every build until it appears
        self.env.note_dependency(str(EXECUTED / f"{path.stem}.ipynb"))
        if problem:
            logging.getLogger(__name__).warning(problem, location=self.get_location())
        docdir = (DOCS / self.env.docname).parent
        document = new_document(str(path), self.state.document.settings)
        MystParser().parse(tutorial_markdown(path, executed=executed, docdir=docdir), document)
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
