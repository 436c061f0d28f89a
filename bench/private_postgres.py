"""A PostgreSQL server of our own, for the suites and tests that stop, start or cut off their database.

The shared server on 5432 must never be restarted, so a fault test that restarts "the database" runs its own:
``initdb`` in a fresh temp folder, ``pg_ctl start`` on a free loopback port (trust authentication, user
``postgres``), and everything removed afterwards. The binaries are found in ``$DURABLE_PG_BINDIR``,
``/usr/lib/postgresql/<newest>/bin`` (Debian, Ubuntu) or on ``PATH``. ``initdb`` refuses to run as root, so
as root the server runs as the ``postgres`` system user (or ``nobody``) and its folder belongs to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL's server binaries are absent."""
    candidates = [os.environ.get("DURABLE_PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += sorted(glob.glob("/usr/local/opt/postgresql*/bin") + glob.glob("/opt/homebrew/opt/postgresql*/bin"))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _version_key(path: str) -> tuple:
    part = Path(path).parent.name
    return tuple(int(x) for x in part.split(".") if x.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` on a free port in a temp folder; :meth:`stop`/:meth:`start` restart it.

    ``fsync=off``: a test server; a ``stop("immediate")`` still exercises crash recovery at the next start
    (only an operating-system crash needs fsync). ``settings`` are extra ``-c name=value`` server settings.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; set DURABLE_PG_BINDIR")
        self.bindir = bindir
        self.port = free_port()
        self.settings = {"fsync": "off", "full_page_writes": "off", "max_connections": "100", **(settings or {})}
        self.root = Path(tempfile.mkdtemp(prefix="durable-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.user = _server_user()
        self.initialized = False
        self.stops = 0

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.root, **kwargs)

    def _check(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                               f"\n{tail}")

    def init(self) -> None:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._check(self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                              "--no-sync", "--locale=C"), "initdb")
        self.initialized = True

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (``initdb`` first if needed) and return once it accepts connections."""
        if not self.initialized:
            self.init()
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._check(self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w",
                              "-t", str(int(timeout)), "-o", " ".join(opts), timeout=timeout + 10), "pg_ctl start")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (sessions terminated, clean shutdown) or ``immediate`` (a crash)."""
        if self.running():
            self._check(self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                                  timeout=70), f"pg_ctl stop -m {mode}")
            self.stops += 1

    def running(self) -> bool:
        return self.initialized and (self.data / "postmaster.pid").exists()

    def admin(self, *statements: str) -> None:
        """Run statements (CREATE DATABASE...) as the superuser, in autocommit."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)

    def cleanup(self) -> None:
        """Stop the server (if running) and remove its folder."""
        try:
            if self.running():
                self.stop("immediate")
        except (RuntimeError, subprocess.SubprocessError):  # already gone: only the folder is left to remove
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None (ourselves) unless we are root, which initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run initdb as")
