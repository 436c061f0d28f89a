"""The supported matrix (docs/install.md): the core on each Python, the Django suite on each Django with each
Python that Django allows. SQLite and the filesystem broker unless DATABASE_URL / CELERY_BROKER_URL are set
(`make test` runs the PostgreSQL + Redis suite on the main venv).

    nox                 # everything (`make test-matrix`)
    nox -t ci           # the subset `make test` runs (`make test-pythons`)
    nox -l              # the session names
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

PYTHONS = ["3.11", "3.12", "3.13"]
# Django feature release -> the Pythons it supports (of PYTHONS). Django 6.x needs Python 3.12 or newer.
DJANGO = {"5.2": ["3.11", "3.12", "3.13"], "6.0": ["3.12", "3.13"], "6.1": ["3.12", "3.13"]}
# `make test` (on 3.11 with the newest Django 5.2) plus these cover each Python and both current 6.x releases.
CI_CORE = {"3.12", "3.13"}
CI_DJANGO = {("6.1", "3.13"), ("6.0", "3.12")}

# The ORM, the admin and its templates, forms, views, system checks, Channels consumers, management commands
# and a real Celery worker (test_security_humantasks); the worker, fault, crash, clock-skew and load suites
# (worker processes for minutes, Django-agnostic) run in `make test` and in the full `django` sessions.
QUICK = [f"tests/django/test_{name}.py" for name in (
    "admin", "bad_input", "channels", "django_api", "django_ops", "expenses", "humantasks",
    "integration", "security_humantasks", "security_signing", "without_humantasks")]

nox.options.sessions = ["core", "django", "django_too_old"]  # `nox` alone: the whole matrix, not django_quick
nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True


def _add_pyenv_pythons() -> None:
    """pyenv's shims answer only for its global versions: put its builds of PYTHONS on PATH for nox to find."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [str(sorted(root.glob(f"{v}.*"))[-1] / "bin") for v in PYTHONS if list(root.glob(f"{v}.*"))]
    os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_add_pyenv_pythons()


@nox.session
@nox.parametrize("python", [nox.param(p, id=p, tags=["ci"] if p in CI_CORE else []) for p in PYTHONS])
def core(session: nox.Session) -> None:
    """The framework-free core: no Django installed."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "-rs", "-p", "no:django", "-p", "no:cacheprovider", "tests/core",
                *session.posargs)


def _install_django(session: nox.Session, django: str) -> None:
    session.install("-e", ".[django,test]", f"django~={django}.0")
    session.run("python", "-c", "import django; print('Django', django.get_version())")


@nox.session
@nox.parametrize(["python", "django"], [
    nox.param(py, dj, id=f"{dj}-py{py}") for dj, pythons in DJANGO.items() for py in pythons])
def django(session: nox.Session, django: str) -> None:
    """The Django app's whole suite on one Django feature release (its newest patch release)."""
    _install_django(session, django)
    session.run("python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/django", *session.posargs)


@nox.session
@nox.parametrize(["python", "django"], [
    nox.param(py, dj, id=f"{dj}-py{py}", tags=["ci"]) for dj, py in sorted(CI_DJANGO)])
def django_quick(session: nox.Session, django: str) -> None:
    """The CI subset of the Django suite: the files that exercise what changes with Django's version."""
    _install_django(session, django)
    session.run("python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *QUICK, *session.posargs)


@nox.session(python="3.11")
@nox.parametrize("django", ["4.2", "5.1"])
def django_too_old(session: nox.Session, django: str) -> None:
    """An unsupported Django (a project's own pin) gets system check error E030, not an obscure failure."""
    # pip would refuse `.[django]` with this Django: install the core alone, as a project with its own pin does.
    session.install("-e", ".", "celery", "channels", f"django~={django}.0")
    session.chdir("tests/packaging/smoke_project")
    session.run("python", "-c", _EXPECT_E030, env={"DJANGO_SETTINGS_MODULE": "smoke_settings"})


_EXPECT_E030 = """
import django
from django.core.management import call_command
from django.core.management.base import SystemCheckError
django.setup()
try:
    call_command("check")
except SystemCheckError as exc:
    assert "durable_django.E030" in str(exc), exc
    print("E030 on Django", django.get_version())
else:
    raise SystemExit("no durable_django.E030 on Django " + django.get_version())
"""
