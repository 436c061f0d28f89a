# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-core test test-mariadb lint docs bench bench-django bench-peers clean test-pythons test-matrix

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[django,dev,docs]"
	touch $@

# The Django demo (expense approval: web server, worker, scheduler) until Ctrl-C; see docs/example.md.
demo: $(VENV)/.installed
	$(PY) manage.py demo

# The framework-free core on its own.
demo-core: $(VENV)/.installed
	$(PY) examples/core_demo.py

# The Django app's tests run a second time on the production parts (PostgreSQL + Redis), then on MariaDB.
DURABLE_PG_URL ?= postgres://postgres@127.0.0.1:5432/test
DURABLE_REDIS_URL ?= redis://127.0.0.1:6379/0
# MariaDB/MySQL (through PyMySQL): each run creates its own test database (test_durable_<session>) and drops it.
DURABLE_MARIADB_URL ?= mysql://root@127.0.0.1:3306/durable

# The public API (what users import) under mypy --strict; the rest under pyproject.toml's settings.
# --follow-imports=silent: errors are reported for these modules only. See docs/typing.md.
PUBLIC_API = durable/__init__.py durable/runtime.py durable/primitives.py durable/exceptions.py durable/state.py \
	durable/backend.py durable/store.py durable/signing.py durable_django/__init__.py durable_django/api.py \
	durable_django/programs.py durable_django/bindings.py durable_django/steps.py durable_django/worker.py \
	durable_django/exceptions.py durable_django/events.py durable/testing.py durable/tracebacks.py durable/debug.py \
	durable_django/testing.py durable_django/pytest_plugin.py durable/progress.py durable_django/progress.py \
	durable/gathering.py durable/children.py
MYPY_STRICT = $(PY) -m mypy --strict --follow-imports=silent $(PUBLIC_API)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy
	$(MYPY_STRICT)
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -q -rs
	DATABASE_URL=$(DURABLE_PG_URL) CELERY_BROKER_URL=$(DURABLE_REDIS_URL) $(PY) -m pytest -q -rs tests/django
	$(MAKE) --no-print-directory test-mariadb

# The documentation site (mkdocs.yml, docs/), warnings as errors; reference pages are generated from the code.
DOCS_SITE ?= build/site
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_SITE)

# The Django app's tests on MariaDB/MySQL (the generic SQL path; see docs/databases.md).
test-mariadb: $(VENV)/.installed
	DATABASE_URL=$(DURABLE_MARIADB_URL) CELERY_BROKER_URL=$(DURABLE_REDIS_URL) $(PY) -m pytest -q -rs tests/django

# Style, types and the architecture, without the tests (`make test` runs these checks too).
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(MYPY_STRICT)
	$(VENV)/bin/lint-imports

# The peer benchmark runs in its own venv: django-durable needs Python >= 3.13, the seed package >= 3.12.
VENV_BENCH ?= .venv-bench
PY_BENCH := $(VENV_BENCH)/bin/python
PYTHON_BENCH ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python) $(shell command -v python3.13))
SEED_PIN = $(shell sed -n 's/^\# seed: //p' bench/requirements-peers.txt)

$(VENV_BENCH)/.installed: pyproject.toml bench/requirements-peers.txt
	@[ -n "$(PYTHON_BENCH)" ] || { echo "no Python 3.13 found (set PYTHON_BENCH=/path/to/python3.13)"; exit 1; }
	$(PYTHON_BENCH) -m venv $(VENV_BENCH)
	$(PY_BENCH) -m pip install -q -U pip
	$(PY_BENCH) -m pip install -q -e ".[django,dev]" -r bench/requirements-peers.txt
	$(PY_BENCH) -m pip install -q --no-deps --upgrade --target $(VENV_BENCH)/seed $(SEED_PIN)
	touch $@

# Core benchmark, then the peers (table, bench/results/peers.json, bench/results/peers.png); see bench/README.md.
bench: $(VENV)/.installed $(VENV_BENCH)/.installed
	$(PY) -m bench
	$(PY_BENCH) -m bench peers

bench-peers: $(VENV_BENCH)/.installed
	$(PY_BENCH) -m bench peers

bench-django: $(VENV)/.installed
	$(PY) -m bench django

clean:
	rm -rf $(VENV) .nox build *.egg-info .pytest_cache

# The supported matrix (noxfile.py, docs/install.md); nox finds the other Pythons on PATH or under ~/.pyenv.
# test-pythons (run by .ci/run after `make test`): the core on 3.12 and 3.13, the Django suite on Django 6.0 with
# Python 3.12 and the newest Django 6.x with 3.13, SQLite. test-matrix: every Python x every supported Django.
NOX := $(VENV)/bin/nox
test-pythons: $(VENV)/.installed
	$(NOX) -t ci

test-matrix: $(VENV)/.installed
	$(NOX)
