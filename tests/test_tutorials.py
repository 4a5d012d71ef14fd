"""Every tutorial runs in smoke mode (``CI`` set), from a scratch folder, and
saves at least one picture.

Tutorials are found by name (``tutorials/NN_name.py``), so a new tutorial
is run without touching this file; any other ``.py`` in ``tutorials/`` must
be a known helper, so a misnamed tutorial cannot slip past unrun.  The full
runs (no ``CI``) take minutes each: ``python tutorials/NN_name.py``.
"""
import re
import runpy
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL_DIR = ROOT / "tutorials"
TUTORIALS = sorted(TUTORIAL_DIR.glob("[0-9][0-9]_*.py"))
HELPERS = {"make_notebooks.py"}


def test_there_are_tutorials():
    assert TUTORIALS


def test_every_python_file_in_tutorials_is_a_tutorial_or_a_known_helper():
    others = {p.name for p in TUTORIAL_DIR.glob("*.py")} - {p.name for p in TUTORIALS} - HELPERS
    assert not others, f"rename to NN_name.py so the smoke test runs them, or list them as helpers: {others}"


def test_tutorials_are_numbered_one_to_n():
    numbers = [int(p.name[:2]) for p in TUTORIALS]
    assert numbers == list(range(1, len(TUTORIALS) + 1)), numbers


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_follows_the_conventions(path):
    """Percent-format cells, a title, the smoke switch, one thread, a seed, a saved picture."""
    source = path.read_text(encoding="utf-8")
    assert source.startswith("# %% [markdown]\n# # "), "start with a markdown cell holding the '# N. Title'"
    assert int(re.match(r"# %% \[markdown\]\n# # (\d+)\.", source).group(1)) == int(path.name[:2])
    assert 'SMOKE_TEST = "CI" in os.environ' in source
    assert "torch.set_num_threads(1)" in source
    assert re.search(r"seed=\d|set_rng_seed\(\d", source), "fix a seed"
    assert ".savefig(" in source


# torch >= 2.10 warns about its own use of torch.jit.script the first time
# forward-mode AD is used (pyro_dgmm.wald.population_curve)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))  # pyro_dgmm from this checkout, installed or not
    monkeypatch.setattr(sys, "argv", [str(path)])
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        plt.close("all")
    assert list(tmp_path.glob("*.png")), "a tutorial shows at least one picture"
