"""The machine and its services: CPU seconds of processes, how busy the machine is, versions of what ran,
the git revision, PostgreSQL databases of a run, and Django set up for a suite."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The checkout (the folder holding ``bench/``, ``durable/``, ``manage.py``).
ROOT = Path(__file__).resolve().parent.parent.parent


def cpu_s(pid: int, children: bool = False) -> float:
    """utime + stime of ``pid`` in seconds, from /proc (with ``children``: plus its waited-for children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot: two readings give the busy share between them."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def pids_named(name: str) -> list[int]:
    """Pids of the processes whose command name is ``name`` (e.g. every ``postgres`` of the machine)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name:
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in kB (``VmRSS`` of /proc/PID/status), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def utc_now() -> str:
    """The date of a run as the tables print it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_meta() -> dict[str, Any]:
    """What every suite's ``meta`` starts with: when, which Python, where."""
    return {"date_utc": utc_now(), "python": sys.version.split()[0], "platform": platform.platform(),
            "nproc": os.cpu_count()}


def git_revision(dirty_paths: tuple[str, ...] | None = ("durable",)) -> str | None:
    """The commit of the checkout, ``+dirty`` when ``dirty_paths`` (``()``: anything) have local changes
    (``None``: not checked); None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        if dirty_paths is None:
            return head
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *dirty_paths], cwd=ROOT, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def changed_files(*paths: str) -> list[str] | None:
    """Files below ``paths`` changed since the commit (``git status``), None without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.splitlines()]


def versions(packages: tuple[str, ...], missing: str = "-", pg_dsn: str | None = None, broker: str | None = None,
             sqlite: bool = False) -> dict[str, str]:
    """Installed versions of ``packages`` (``missing`` if not installed), and of the services a run used:
    the PostgreSQL server of ``pg_dsn``, the Redis server of ``broker``, the SQLite library."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = missing
    if pg_dsn is not None or broker is not None:
        try:
            if pg_dsn is not None:
                import psycopg

                with psycopg.connect(pg_dsn) as conn:
                    row = conn.execute("SHOW server_version").fetchone()
                    out["postgresql"] = row[0] if row else "?"
            if broker is not None:
                import redis

                out["redis-server"] = redis.Redis.from_url(broker).info("server")["redis_version"]
        except Exception as exc:  # the figures still say what they can
            out["services"] = f"unknown: {exc}"
    if sqlite:
        import sqlite3

        out["sqlite"] = sqlite3.sqlite_version
    return out


def admin_dsn(pg_url: str) -> str:
    """The server of ``pg_url``, database ``postgres`` (where databases are dropped and created)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_url)
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))


def pg_admin(dsn: str, *statements: str) -> None:
    """Run ``statements`` in autocommit mode on ``dsn`` (the server's ``postgres`` database)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def recreate_database(dsn: str, name: str) -> None:
    """Drop (with its connections) and create the database ``name`` of the server of ``dsn``."""
    pg_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')


def drop_database(dsn: str, name: str) -> None:
    """Drop the database ``name`` of the server of ``dsn`` (with its connections), if it exists."""
    pg_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(env: dict[str, str] | None = None, settings: str | None = None, celery_app: bool = False,
                 migrate: bool = False) -> None:
    """Set Django up in this process: ``env`` merged into the environment first, ``settings`` as the settings
    module (refused when another one is configured already), then the benchmark's Celery app imported (the
    wake-ups are sent with it) and the migrations applied, if asked."""
    if env:
        os.environ.update(env)
    import django

    if settings is not None:
        from django.conf import settings as configured

        if configured.configured and os.environ.get("DJANGO_SETTINGS_MODULE") != settings:
            raise RuntimeError(f"Django is configured already: set up {settings} in a fresh process")
        os.environ["DJANGO_SETTINGS_MODULE"] = settings
    django.setup()
    if celery_app:
        importlib.import_module("bench.django_celery")
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
