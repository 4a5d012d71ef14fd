"""Write a Jupyter notebook for every tutorial source (jupytext percent
format), either without outputs into ``tutorials/notebooks/`` or executed,
with their outputs and figures, for the docs.

    python tutorials/make_notebooks.py            # all tutorials, no outputs
    python tutorials/make_notebooks.py 01 04      # by number
    python tutorials/make_notebooks.py --execute --out docs/_build/executed
    python tutorials/make_notebooks.py --execute --mode full 04

The ``.py`` files are the sources: edit those, not the notebooks, and
rerun this script (``jupytext`` comes with ``pip install -e ".[docs]"``).
The notebooks in ``tutorials/notebooks/`` carry no outputs; run them in
Jupyter, or run a source as a script (``python tutorials/01_quickstart.py``),
which also saves its figures.

``--execute`` runs each tutorial, cell by cell, in a fresh Python process
(no Jupyter kernel needed), in a scratch folder, and writes
``OUT/NN_name.ipynb`` with each code cell's printed output, warnings, the
value of its last expression (as Jupyter shows it: a DataFrame as an HTML
table) and the figures the cell saved (``savefig``), which are also kept
as ``OUT/NN_name_files/*.png`` for the docs (``make docs`` renders these
notebooks; see docs/conf.py).  ``--mode smoke`` (default) sets ``CI`` so
every tutorial runs its tiny smoke version (seconds each: the code path and
the pictures, not the results); ``--mode full`` runs them as written
(minutes each).  A notebook is executed again only when its source, the
``pyro_dgmm`` package or the mode changed since it was written
(``--force``: always).  A cell that raises stops the run with the
tutorial's name and the cell's number.
"""
from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "notebooks"
MODES = ("smoke", "full")


def tutorials(numbers: list[str] | None = None) -> list[Path]:
    """The tutorial sources ``NN_name.py``, optionally only those numbered ``numbers``."""
    paths = sorted(HERE.glob("[0-9][0-9]_*.py"))
    return [p for p in paths if not numbers or p.name[:2] in numbers]


def read_notebook(source: Path):
    """The notebook of one percent-format source, with a Python 3 kernelspec
    and the source's name in its metadata."""
    import jupytext

    notebook = jupytext.read(source, fmt="py:percent")
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook.metadata.setdefault("jupytext", {})["source"] = f"tutorials/{source.name}"
    return notebook


def to_notebook(source: Path, out_dir: Path = OUT) -> Path:
    """Convert one percent-format source to ``out_dir/<stem>.ipynb`` (no outputs)."""
    import jupytext

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    jupytext.write(read_notebook(source), target, fmt="ipynb")
    return target


# ------------------------------------------------------------ execution
def source_digest(source: Path) -> str:
    """SHA-256 of the tutorial source alone: docs/conf.py compares it with the
    executed notebook's to refuse outputs of an edited tutorial."""
    return hashlib.sha256(source.read_bytes()).hexdigest()


def run_key(source: Path, mode: str) -> str:
    """What an executed notebook depends on: the source, every file of the
    ``pyro_dgmm`` package (code and shipped data) and the mode."""
    digest = hashlib.sha256(f"{mode}\0{source_digest(source)}".encode())
    for path in sorted((ROOT / "pyro_dgmm").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _stream(name: str, text: str) -> dict:
    """A stream output; progress bars' carriage-return redraws reduced to
    the last state of each line."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return {"output_type": "stream", "name": name, "text": "\n".join(lines)}


def _display(value) -> dict:
    """An ``execute_result`` for a cell's last value, as IPython shows it:
    ``text/plain`` always, ``text/html`` for objects with ``_repr_html_``
    (DataFrames)."""
    data = {"text/plain": repr(value)}
    html = getattr(value, "_repr_html_", None)
    if callable(html):
        rendered = html()
        if rendered:
            data["text/html"] = rendered
    return {"output_type": "execute_result", "execution_count": None, "data": data, "metadata": {}}


def _pictures(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def _run_cells(notebook, source: Path, scratch: Path, files: Path) -> None:
    """Execute the code cells of ``notebook`` in one namespace, in
    ``scratch``, filling in their outputs; figures saved by a cell are
    copied to ``files`` and attached to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # warnings as 'Category: message', without the build machine's file paths and source lines
    warnings.formatwarning = lambda message, category, *_, **__: f"{category.__name__}: {message}\n"
    namespace = {"__name__": "__main__", "__file__": str(source)}
    number = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        number += 1
        tree = ast.parse(cell.source, filename=f"{source.name} cell {number}")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        before = _pictures(scratch)
        out, err = io.StringIO(), io.StringIO()
        value = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                exec(compile(tree, f"{source.name} (code cell {number})", "exec"), namespace)
                if last is not None:
                    value = eval(compile(ast.Expression(last.value), f"{source.name} (code cell {number})", "eval"),
                                 namespace)
            except BaseException as error:
                sys.__stderr__.write(out.getvalue() + err.getvalue())
                raise RuntimeError(f"{source.name}: code cell {number} raised {type(error).__name__}: "
                                   f"{error}") from error
        outputs = [_stream(name, buffer.getvalue()) for name, buffer in (("stdout", out), ("stderr", err))
                   if buffer.getvalue()]
        if value is not None:
            outputs.append(_display(value))
        after = _pictures(scratch)
        for name in sorted(n for n, stamp in after.items() if before.get(n) != stamp):
            files.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scratch / name, files / name)
            outputs.append({"output_type": "display_data", "metadata": {"filename": f"{files.name}/{name}"},
                            "data": {"image/png": base64.b64encode((scratch / name).read_bytes()).decode("ascii"),
                                     "text/plain": f"<{name}>"}})
        cell.outputs = outputs
        cell.execution_count = number
    plt.close("all")


def execute_here(source: Path, out_dir: Path, mode: str) -> Path:
    """Execute one tutorial in this process (``--run-one``; :func:`execute`
    starts a fresh process for it) and write ``out_dir/<stem>.ipynb``."""
    import nbformat

    sys.path.insert(0, str(ROOT))  # pyro_dgmm from this checkout, installed or not
    from pyro_dgmm.files import write_text_atomic

    if mode == "smoke":
        os.environ["CI"] = "1"
    else:
        os.environ.pop("CI", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    notebook = read_notebook(source)
    files = out_dir / f"{source.stem}_files"
    shutil.rmtree(files, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{source.stem}-") as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)
        sys.argv = [str(source)]
        try:
            _run_cells(notebook, source, Path(scratch), files)
        finally:
            os.chdir(cwd)
    notebook.metadata["pyro_dgmm"] = {"mode": mode, "key": run_key(source, mode),
                                      "source_sha256": source_digest(source)}
    notebook = nbformat.from_dict(notebook)
    nbformat.validate(notebook)
    target = out_dir / f"{source.stem}.ipynb"
    write_text_atomic(target, nbformat.writes(notebook))
    return target


def up_to_date(source: Path, out_dir: Path, mode: str) -> bool:
    """Whether ``out_dir`` holds this tutorial executed in ``mode`` from the
    current source and package."""
    import json

    target = out_dir / f"{source.stem}.ipynb"
    try:
        meta = json.loads(target.read_text(encoding="utf-8"))["metadata"].get("pyro_dgmm", {})
    except (OSError, ValueError, KeyError):
        return False
    return meta.get("key") == run_key(source, mode)


def execute(source: Path, out_dir: Path, mode: str = "smoke", *, force: bool = False) -> Path:
    """Execute one tutorial in a fresh Python process (so tutorials never
    share Pyro's parameter store or random state) unless it is up to date."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    if not force and up_to_date(source, out_dir, mode):
        return target
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--run-one", str(source),
                    "--out", str(out_dir), "--mode", mode], check=True)
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", help="tutorial numbers (default: all)")
    parser.add_argument("--execute", action="store_true", help="run the tutorials and keep their outputs")
    parser.add_argument("--mode", choices=MODES, default="smoke",
                        help="smoke (default: tiny fits, seconds each) or full (as written, minutes each)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: tutorials/notebooks, or docs/_build/executed with --execute)")
    parser.add_argument("--force", action="store_true", help="execute even if up to date")
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        execute_here(args.run_one.resolve(), args.out.resolve(), args.mode)
        return 0
    sources = tutorials(args.numbers or None)
    if not sources:
        print(f"no tutorial matches {args.numbers}", file=sys.stderr)
        return 1
    out_dir = (args.out or (ROOT / "docs" / "_build" / "executed" if args.execute else OUT)).resolve()
    for source in sources:
        if args.execute:
            try:
                target = execute(source, out_dir, args.mode, force=args.force)
            except subprocess.CalledProcessError:
                print(f"{source.name} failed in {args.mode} mode (its error is above)", file=sys.stderr)
                return 1
        else:
            target = to_notebook(source, out_dir)
        print(os.path.relpath(target, Path.cwd()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
