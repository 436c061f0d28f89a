# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean test-pythons

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[django,dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/core_demo.py

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# The core on every other Python it supports that this machine has (pyenv).
PYTHONS ?= 3.12 3.13
test-pythons:
	@for v in $(PYTHONS); do \
	  exe=$$(ls -d $$HOME/.pyenv/versions/$$v*/bin/python 2>/dev/null | head -1); \
	  [ -n "$$exe" ] || exe=$$(command -v python$$v); \
	  if [ -z "$$exe" ]; then echo "python $$v not found, skipped"; continue; fi; \
	  $$exe -m venv .venv-$$v && .venv-$$v/bin/pip install -q cloudpickle pytest pytest-timeout hypothesis && \
	  PYTHONPATH=. .venv-$$v/bin/python -m pytest -q -p no:django -p no:cacheprovider tests/core || exit 1; \
	done
