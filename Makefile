# Two commands for a newcomer: `make demo` and `make test` (each creates .venv on first use).
# The tests' tiny models run much faster with one intra-op thread; the demo uses every core.
TEST_THREADS ?= 1
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: here pip picks the local CPU build of 2.13.0; elsewhere the CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test test-slow lint bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m mrsr.run stage=sr scale=2

test: $(VENV)/.installed
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -m "not slow" -q

test-slow: $(VENV)/.installed
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -m slow -q

lint: $(VENV)/.installed
	$(PY) -m ruff check mrsr tests experiments docs/hooks.py
	$(PY) -m ruff format --check mrsr tests experiments docs/hooks.py

bench: $(VENV)/.installed
	$(PY) experiments/bench_data.py
	$(PY) experiments/bench_inference.py
	$(PY) experiments/bench_train.py
	$(PY) experiments/bench_models.py

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf outputs multirun site .pytest_cache
