# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-core test lint bench clean test-pythons

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[django,dev]"
	touch $@

# The Django demo (expense approval: web server, worker, scheduler) until Ctrl-C; see README "Example project".
demo: $(VENV)/.installed
	$(PY) manage.py demo

# The framework-free core on its own.
demo-core: $(VENV)/.installed
	$(PY) examples/core_demo.py

# The Django app's tests run a second time on the production parts (PostgreSQL + Redis).
DURABLE_PG_URL ?= postgres://postgres@127.0.0.1:5432/test
DURABLE_REDIS_URL ?= redis://127.0.0.1:6379/0

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q
	DATABASE_URL=$(DURABLE_PG_URL) CELERY_BROKER_URL=$(DURABLE_REDIS_URL) $(PY) -m pytest -q tests/django

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
