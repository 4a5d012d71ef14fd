"""Write a Jupyter notebook for every tutorial source (jupytext percent
format) into ``tutorials/notebooks/``, without executing it.

    python tutorials/make_notebooks.py            # all tutorials
    python tutorials/make_notebooks.py 01 04      # by number

The ``.py`` files are the sources: edit those, not the notebooks, and
rerun this script (``jupytext`` comes with ``pip install -e ".[docs]"``).
The notebooks carry no outputs; run them in Jupyter, or run a source as a
script (``python tutorials/01_quickstart.py``), which also saves its figures.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "notebooks"


def tutorials(numbers: list[str] | None = None) -> list[Path]:
    """The tutorial sources ``NN_name.py``, optionally only those numbered ``numbers``."""
    paths = sorted(HERE.glob("[0-9][0-9]_*.py"))
    return [p for p in paths if not numbers or p.name[:2] in numbers]


def to_notebook(source: Path, out_dir: Path = OUT) -> Path:
    """Convert one percent-format source to ``out_dir/<stem>.ipynb``."""
    import jupytext

    notebook = jupytext.read(source, fmt="py:percent")
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook.metadata.setdefault("jupytext", {})["source"] = f"tutorials/{source.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    jupytext.write(notebook, target, fmt="ipynb")
    return target


def main(argv: list[str]) -> int:
    sources = tutorials(argv or None)
    if not sources:
        print(f"no tutorial matches {argv}", file=sys.stderr)
        return 1
    for source in sources:
        print(to_notebook(source).relative_to(HERE.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
