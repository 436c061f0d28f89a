"""The package a user installs: build the sdist and the wheel, install the wheel into a fresh virtualenv, and run
a small Django project against it (migrations, the task and admin pages, status.js, py.typed).

The editable install of the checkout never notices a file missing from the wheel; this test does. The build
runs with build isolation (its requirements come from pyproject.toml, as on a user's machine) and reuses pip's
cache; the whole test takes about 20 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE_PROJECT = Path(__file__).resolve().parent / "smoke_project"
DATA_FILES = [
    "durable/py.typed",
    "durable_django/py.typed",
    "durable_django/static/durable_django/status.js",
    "durable_django/templates/admin/durable_django/durableinstance/detail.html",
    "durable_django/templates/durable_django/base.html",
    "durable_django/templates/durable_django/status_widget.html",
    "durable_django/templates/durable_django/task_answer.html",
    "durable_django/templates/durable_django/task_list.html",
    "durable_django/migrations/0001_initial.py",
    "durable_django/humantasks/migrations/0001_initial.py",
    "durable_django/management/commands/durable_resume.py",
]

pytestmark = pytest.mark.timeout(600)


def run(*cmd: str | os.PathLike, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="durable-wheel-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dists(workdir: Path) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from the sdist (so the sdist must be complete too)."""
    # The build runs from a copy: setuptools writes an egg-info folder next to the sources.
    source = workdir / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "var", "bench"))
    run(sys.executable, "-m", "build", "--outdir", workdir / "dist", source)
    (wheel,) = (workdir / "dist").glob("*.whl")
    (sdist,) = (workdir / "dist").glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_ships_templates_static_migrations_and_py_typed(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    assert [f for f in DATA_FILES if f not in names] == []
    assert not [n for n in names if n.startswith(("tests/", "example_project/", "bench/"))]


def test_sdist_ships_what_the_wheel_needs(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert [f for f in [*DATA_FILES, "LICENSE", "pyproject.toml", "README.md"] if f not in names] == []


def test_metadata_uses_an_spdx_license_expression(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(whl.read(meta).decode())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist())
    assert headers["License-Expression"] == "MIT"
    assert headers["License-File"] == "LICENSE"
    assert headers["Requires-Python"]


def test_installed_wheel_runs_a_django_project(dists, workdir: Path):
    """A fresh virtualenv with the wheel and its ``django`` extra; the smoke project runs outside the checkout."""
    venv = workdir / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # This interpreter's pip installs into the new environment (--python): no pip bootstrap, pip's cache reused.
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
        f"{dists['wheel']}[django]")
    project = workdir / "project"
    shutil.copytree(SMOKE_PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "SMOKE_CHECKOUT": str(ROOT),
           "PYTHONDONTWRITEBYTECODE": "1"}
    out = run(python, project / "check_installed.py", cwd=workdir, env=env)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["durable"].startswith(str(venv))
    assert report["py.typed"] == {"durable": True, "durable_django": True}
