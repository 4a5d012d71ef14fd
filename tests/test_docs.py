"""Documentation that cannot rot: the doctests of every pyro_dgmm module,
a docs page for every module and tutorial, every page in a table of
contents, and (slow) the Sphinx build with warnings as errors.

The Sphinx build itself is ``make docs``; it needs the ``docs`` extra
(``pip install -e ".[docs]"``), so the tests that need Sphinx or jupytext
are skipped without it.
"""
import doctest
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import pyro_dgmm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
MODULES = ["pyro_dgmm"] + sorted(
    m.name for m in pkgutil.walk_packages(pyro_dgmm.__path__, "pyro_dgmm.") if m.name != "pyro_dgmm.__main__"
)
# modules documented on their package's page (re-exported through its __all__)
DOCUMENTED_WITH_PACKAGE = {"pyro_dgmm.datasets.pbc", "pyro_dgmm.datasets.simulate"}
# public objects without a docstring today; remove entries as docstrings are added
MISSING_DOCSTRINGS = {
    "pyro_dgmm.cli.build_parser", "pyro_dgmm.cli.main",
    "pyro_dgmm.fit.FitConfig.resolved_device",
}


# ----------------------------------------------------------------- doctests
@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    """Every public module has at least one runnable example (``>>>``
    lines, in its docstring or its objects'), and they print what they say."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no runnable docstring example (>>> lines); add one"
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"


def public_objects():
    """(qualified name, object) of the public classes and functions of every
    module (its ``__all__`` if it has one), and the public methods of those classes."""
    for name in MODULES:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or (exported is not None and attr not in exported):
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != name:
                continue
            yield f"{name}.{attr}", obj
            if inspect.isclass(obj):
                for method, member in vars(obj).items():
                    if not method.startswith("_") and inspect.isfunction(member):
                        yield f"{name}.{attr}.{method}", member


def test_public_objects_have_docstrings():
    missing = {qualified for qualified, obj in public_objects() if not (inspect.getdoc(obj) or "").strip()}
    assert missing <= MISSING_DOCSTRINGS, f"public objects without a docstring: {sorted(missing - MISSING_DOCSTRINGS)}"
    fixed = MISSING_DOCSTRINGS - missing
    assert not fixed, f"these have docstrings now; remove them from MISSING_DOCSTRINGS: {sorted(fixed)}"


# ------------------------------------------------------------ docs pages
def toctree_entries() -> set[str]:
    """Documents named in the toctrees of index.md and api.rst (globs expanded)."""
    entries = set()
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for block in re.findall(r"```\{toctree\}\n(.*?)```", index, flags=re.S):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                entries |= {p.stem for p in DOCS.glob(line + ".*")} if "*" in line else {line}
    api = (DOCS / "api.rst").read_text(encoding="utf-8")
    entries |= set(re.findall(r"^ {3}(api/\w+)$", api, flags=re.M))
    return entries


def test_every_docs_page_is_in_a_table_of_contents():
    pages = {p.stem for p in DOCS.glob("*.md")} | {p.stem for p in DOCS.glob("*.rst")}
    pages |= {f"api/{p.stem}" for p in (DOCS / "api").glob("*.rst")}
    pages.discard("index")
    entries = toctree_entries()
    assert not pages - entries, f"add these pages to a toctree in docs/index.md or docs/api.rst: {pages - entries}"
    assert not entries - pages, f"toctree entries without a page: {entries - pages}"


def test_every_module_has_an_api_page():
    documented = {
        line.split("::")[1].strip()
        for page in (DOCS / "api").glob("*.rst")
        for line in page.read_text(encoding="utf-8").splitlines() if line.startswith(".. automodule::")
    }
    expected = {m for m in MODULES if m.count(".") == 1} | {"pyro_dgmm.datasets"}
    missing = expected - documented - DOCUMENTED_WITH_PACKAGE
    assert not missing, f"write docs/api/<module>.rst for {sorted(missing)}"


def test_every_tutorial_has_a_docs_page():
    pages = {}
    for page in DOCS.glob("tutorial[0-9]*.rst"):
        match = re.search(r"^\.\. tutorial:: (\S+)$", page.read_text(encoding="utf-8"), flags=re.M)
        assert match, f"{page.name} has no '.. tutorial::' directive"
        pages[match.group(1)] = page.name
    assert set(pages) == {p.name for p in TUTORIALS}, (
        f"each tutorials/NN_name.py needs docs/tutorialNN.rst containing '.. tutorial:: NN_name.py'; "
        f"pages: {pages}"
    )
    for source, page in pages.items():
        assert page == f"tutorial{source[:2]}.rst"


# --------------------------------------------- rendering without Sphinx runs
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorials_render_to_markdown_and_notebooks(path, tmp_path, monkeypatch):
    """The docs' tutorial renderer and the notebook writer accept every
    source (needs jupytext, from the docs extra)."""
    pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.syspath_prepend(str(ROOT / "tutorials"))
    from make_notebooks import to_notebook

    notebook = nbformat.read(to_notebook(path, tmp_path), as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")

    pytest.importorskip("sphinx")
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    markdown = conf.tutorial_markdown(path)
    assert markdown.startswith("# ") and "```python" in markdown and "{download}" in markdown


# ------------------------------------------------------------ Sphinx build
@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
