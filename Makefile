# Two commands set everything up from nothing (idempotent):
#   make demo   -- fit a DGMM to the shipped PBC data, write outputs/pbc/
#   make test   -- run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

.PHONY: install demo test test-slow bench docs docs-extra tutorials
install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pyro_dgmm fit --dataset pbc --out outputs/pbc

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m slow

# Every benchmark script (about an hour on 2 cores), then the docs page that
# renders benchmarks/results/*.json as tables
BENCHMARKS := core_accuracy missing_data dynamic_prediction standard_errors speed_scale scale_vs_mixedlm stopping_rule mixedlm_seeds \
	schedule_length optimizer_step parallel_throughput summary_time
bench: $(STAMP)
	cd benchmarks && for script in $(BENCHMARKS); do OMP_NUM_THREADS=1 ../$(PY) $$script.py || exit 1; done
	$(MAKE) docs

# The tutorials executed into notebooks with their outputs and figures, for
# the docs: TUTORIALS=smoke (default: tiny fits, a minute or two in all) or
# TUTORIALS=full (minutes each); a notebook is rerun only when its source,
# the package or the mode changed
TUTORIALS ?= smoke
EXECUTED := docs/_build/executed
docs-extra: $(STAMP)
	$(PY) -c "import sphinx, myst_parser, furo, jupytext, nbformat, importlib; importlib.import_module('sphinx-mathjax-offline')" 2>/dev/null \
		|| $(PY) -m pip install --quiet -e ".[docs]"

tutorials: docs-extra
	OMP_NUM_THREADS=1 $(PY) tutorials/make_notebooks.py --execute --mode $(TUTORIALS) --out $(EXECUTED)

# HTML docs in docs/_build/html, warnings as errors, with the executed
# tutorials; needs no network once the docs extra is installed (installed
# here on first use), and the pages need none either (MathJax is served
# from the site itself)
docs: tutorials
	OMP_NUM_THREADS=1 PYRO_DGMM_EXECUTED=$(EXECUTED) $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
