# One command from a bare machine: make test (or make demo / make bench).
# A virtual environment in .venv gets torch==2.13.0 FIRST (the local CPU build;
# letting a dependency pull torch would download a multi-GB CUDA build), then
# the project with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install lint test test-slow demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev,hf]"
	touch $(STAMP)

install: $(STAMP)

# ruff rules and mypy settings: [tool.ruff] and [tool.mypy] in pyproject.toml
lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m mypy curvprobe

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# exit code 5 (no test marked slow) is not a failure here
test-slow: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow $(PYTEST_ARGS); s=$$?; [ $$s -eq 5 ] || exit $$s

demo: $(STAMP)
	$(VENV)/bin/curvprobe demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/eigensolvers.py
	$(PY) benchmarks/criteria.py
	$(PY) benchmarks/spectral.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# Documentation site (make docs) and executed notebooks (make test-notebooks):
# each installs its extra once, behind its own stamp, on top of the base install.
DOCS_STAMP := $(VENV)/.installed-docs
NOTEBOOKS_STAMP := $(VENV)/.installed-notebooks

.PHONY: docs test-notebooks

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PIP) install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

$(NOTEBOOKS_STAMP): $(STAMP) pyproject.toml
	$(PIP) install --quiet -e ".[dev,notebooks]"
	touch $(NOTEBOOKS_STAMP)

test-notebooks: $(NOTEBOOKS_STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q tests/test_notebooks.py -m notebooks $(PYTEST_ARGS)

# The hf extra's oldest supported transformers (4.46.3, with its tokenizers and hub), installed
# beside the venv into .hf-oldest and put first on the path for the adapter tests. Its hub (<1.0)
# needs requests, which the current transformers no longer pulls into the venv.
HF_OLDEST := .hf-oldest
.PHONY: test-hf-oldest

$(HF_OLDEST)/.installed: $(STAMP)
	$(PIP) install --quiet --no-deps --target $(HF_OLDEST) "transformers==4.46.3" "tokenizers>=0.20,<0.21" "huggingface-hub<1.0"
	$(PIP) install --quiet --target $(HF_OLDEST) "requests>=2.26"
	touch $(HF_OLDEST)/.installed

test-hf-oldest: $(HF_OLDEST)/.installed
	PYTHONPATH=$(HF_OLDEST) OMP_NUM_THREADS=2 $(PY) -m pytest -q tests/zoo/test_adapters.py $(PYTEST_ARGS)
