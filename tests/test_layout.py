"""The package layout of docs/developer.md: modules of one job, none over
600 lines, and results, plotting and conversion apart from inference."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_dgmm"
MAX_LINES = 600
#: What a module that must not import inference may import from pyro_dgmm:
#: the data layer, the leaf modules and the result types (plus ``__version__``).
DATA_LAYER = {"errors", "data", "longitudinal", "covariates", "times", "frames", "bases", "families", "family",
              "options", "files", "diagnostics", "parameters", "results"}


def package_imports(path: Path) -> set[str]:
    """The pyro_dgmm modules ``path`` imports anywhere (module level or in a
    function), as names relative to the package ('results', 'fit', ...)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            if node.module:
                imported.add(node.module.split(".")[0])
            else:  # from . import a, b
                imported |= {alias.name for alias in node.names if alias.name != "__version__"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_dgmm."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("pyro_dgmm.")}
    return imported


def test_package_imports_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from .results import A\nfrom . import __version__, wald\n"
                      "def f():\n    from .fit import fit_svi\n    import pyro_dgmm.predict\n")
    assert package_imports(source) == {"results", "wald", "fit", "predict"}


def test_no_module_is_over_600_lines():
    lengths = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
               for path in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not over, f"split these modules (at most {MAX_LINES} lines): {over}"


@pytest.mark.parametrize("name", ["results.py", "plotting.py", "plotting_predict.py", "convert.py",
                                  "event_evaluation.py", "event_baselines.py", "plotting_joint.py"])
def test_results_plotting_and_convert_import_no_inference_module(name):
    inference = package_imports(PACKAGE / name) - DATA_LAYER
    assert not inference, f"{name} imports inference modules {sorted(inference)}; take result types from results.py"


def test_the_data_layer_imports_no_inference_module():
    """What results.py may import must itself stay below inference."""
    for name in DATA_LAYER:
        inference = package_imports(PACKAGE / f"{name}.py") - DATA_LAYER
        assert not inference, f"{name}.py imports {sorted(inference)}"
