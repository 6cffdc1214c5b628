# `make run`: create .venv if missing, install the project, run the main job (a balanced_subnet sweep on the
# embedded math-demo default). `make test`: same set-up, then the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) sweeps/run.py --method balanced_subnet

test: $(STAMP)
	env -u RAY_ADDRESS $(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the few end-to-end tests marked slow.
test-fast: $(STAMP)
	env -u RAY_ADDRESS $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/eval_speed.py

clean:
	rm -rf $(VENV) tinymem-runs .pytest_cache
