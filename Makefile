# `make run`: create .venv if missing, install the project (what running needs), run the main job (a
# balanced_subnet sweep on the embedded math-demo default). `make test`: the same plus the test-only `dev`
# extra, then the test suite. Each install is redone when pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: run test test-fast bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(DEV_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: $(RUN_STAMP)
	$(PY) sweeps/run.py --method balanced_subnet

test: $(DEV_STAMP)
	env -u RAY_ADDRESS $(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the few end-to-end tests marked slow.
test-fast: $(DEV_STAMP)
	env -u RAY_ADDRESS $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(RUN_STAMP)
	$(PY) bench/eval_speed.py

clean:
	rm -rf $(VENV) tinymem-runs .pytest_cache
