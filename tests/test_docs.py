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
MISSING_DOCSTRINGS: set[str] = set()


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


def load_conf():
    """docs/conf.py as a module (needs Sphinx, from the docs extra)."""
    pytest.importorskip("sphinx")
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", flags=re.I)


def remote_resources(html: str) -> list[str]:
    """Scripts and stylesheets an HTML page loads from another host
    (``http://``, ``https://`` or protocol-relative ``//``)."""
    scripts = re.findall(r"<script\b[^>]*\bsrc=[\"']([^\"']+)", html, flags=re.I)
    sheets = [re.search(r"\bhref=[\"']([^\"']+)", tag).group(1)
              for tag in re.findall(r"<link\b[^>]*>", html, flags=re.I)
              if re.search(r"stylesheet|preload|modulepreload", tag, flags=re.I) and "href=" in tag]
    return [url for url in scripts + sheets if REMOTE.match(url.strip())]


def test_remote_resources_are_found():
    """The detector of the build test below flags CDN scripts and passes local ones."""
    page = ('<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
            '<script src="_static/doctools.js?v=1"></script><script src="//example.org/x.js"></script>'
            '<link rel="stylesheet" href="https://fonts.example.org/a.css"/><link rel="stylesheet" href="_static/b.css"/>')
    assert remote_resources(page) == ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js",
                                      "//example.org/x.js", "https://fonts.example.org/a.css"]


def test_math_is_served_by_the_site_itself():
    """conf.py loads MathJax from the built site (the sphinx-mathjax-offline
    package copies it into _static/), never from a CDN, so pages render
    math offline."""
    conf = load_conf()
    assert "sphinx.ext.mathjax" in conf.extensions and "sphinx-mathjax-offline" in conf.extensions
    assert not REMOTE.match(conf.mathjax_path) and not Path(conf.mathjax_path).is_absolute()
    package = importlib.util.find_spec("sphinx-mathjax-offline")
    assert package is not None, "install the docs extra: pip install -e '.[docs]'"
    shipped = Path(package.origin).parent / "static" / "mathjax" / conf.mathjax_path.removeprefix("mathjax/")
    assert shipped.is_file(), f"{conf.mathjax_path} is not in the package ({shipped})"


def fake_executed(source: Path, folder: Path, *, edited: bool = False):
    """An executed notebook of ``source`` as ``make_notebooks.py --execute``
    writes it, with made-up outputs (one printed line, one figure) in its
    first code cell, saved in ``folder``."""
    nbformat = pytest.importorskip("nbformat")
    sys.path.insert(0, str(ROOT / "tutorials"))
    try:
        from make_notebooks import read_notebook, source_digest
    finally:
        sys.path.remove(str(ROOT / "tutorials"))
    notebook = read_notebook(source)
    cell = next(c for c in notebook.cells if c.cell_type == "code")
    (folder / f"{source.stem}_files").mkdir(parents=True)
    (folder / f"{source.stem}_files" / "fig.png").write_bytes(b"png")
    cell.outputs = [{"output_type": "stream", "name": "stdout", "text": "hello ```\n"},
                    {"output_type": "display_data", "metadata": {"filename": f"{source.stem}_files/fig.png"},
                     "data": {"image/png": "cG5n", "text/plain": "<fig.png>"}}]
    digest = "0" * 64 if edited else source_digest(source)
    notebook.metadata["pyro_dgmm"] = {"mode": "smoke", "key": "k", "source_sha256": digest}
    nbformat.write(nbformat.from_dict(notebook), folder / f"{source.stem}.ipynb")


def test_tutorial_pages_show_the_outputs_of_the_executed_notebook(tmp_path, monkeypatch):
    """A code cell is followed by its printed text (in a fence its backticks
    cannot close) and its figure, linked from the docs folder; the page says
    the outputs come from a smoke run."""
    pytest.importorskip("jupytext")
    conf = load_conf()
    fake_executed(TUTORIALS[0], tmp_path)
    monkeypatch.setattr(conf, "EXECUTED", tmp_path)
    notebook, problem = conf.executed_notebook(TUTORIALS[0])
    assert problem is None
    markdown = conf.tutorial_markdown(TUTORIALS[0], executed=notebook, docdir=DOCS)
    image = os.path.relpath(tmp_path / f"{TUTORIALS[0].stem}_files" / "fig.png", DOCS)
    assert f"![fig.png]({image})" in markdown
    assert "````text\nhello ```\n````" in markdown
    assert "smoke run" in markdown
    code, _, rest = markdown.partition("```python\n")[2].partition("\n```\n")
    assert rest.lstrip().startswith("````text"), "the output follows its own code cell"


def test_an_executed_notebook_of_another_source_version_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("jupytext")
    conf = load_conf()
    monkeypatch.setattr(conf, "EXECUTED", tmp_path)
    assert "no executed notebook" in conf.executed_notebook(TUTORIALS[0])[1]
    fake_executed(TUTORIALS[0], tmp_path, edited=True)
    notebook, problem = conf.executed_notebook(TUTORIALS[0])
    assert notebook is None and "another version" in problem


# ------------------------------------------------------------ Sphinx build
@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    """The tutorials executed in smoke mode (``make tutorials``) and the
    HTML docs built from them with warnings as errors (``make docs``),
    into a scratch folder: (Sphinx's exit code and stderr, the HTML folder)."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("jupytext")
    root = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_DGMM_EXECUTED": str(root / "executed")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, str(ROOT / "tutorials" / "make_notebooks.py"), "--execute", "--out",
                    str(root / "executed")], check=True, env=env, timeout=1800, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(root / "html")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    return result, root / "html"


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(built_docs):
    result, _ = built_docs
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_built_pages_load_no_remote_script(built_docs):
    """Offline readers see rendered math: no page loads a script or a
    stylesheet from another host, and MathJax is in the site."""
    result, html = built_docs
    assert result.returncode == 0, result.stderr[-3000:]
    pages = sorted(html.rglob("*.html"))
    assert len(pages) > 20
    remote = {str(p.relative_to(html)): remote_resources(p.read_text(encoding="utf-8")) for p in pages}
    assert not {page: urls for page, urls in remote.items() if urls}
    inference = (html / "inference.html").read_text(encoding="utf-8")
    assert 'src="_static/mathjax/tex-chtml.js"' in inference and "\\(" in inference
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()


@pytest.mark.slow
def test_every_tutorial_page_shows_its_figures(built_docs):
    result, html = built_docs
    assert result.returncode == 0, result.stderr[-3000:]
    for source in TUTORIALS:
        page = (html / f"tutorial{source.name[:2]}.html").read_text(encoding="utf-8")
        images = re.findall(r'<img [^>]*src="(_images/[^"]+\.png)"', page)
        assert images, f"tutorial{source.name[:2]}.html shows no figure"
        assert all((html / image).is_file() for image in images)
