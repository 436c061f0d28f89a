"""Child processes of a run: waiting for a condition with a deadline, and Celery workers started, watched and
always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .environment import ROOT


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
             check: Callable[[], None] | None = None) -> Any:
    """Poll ``pred`` every ``interval`` s until it returns something true, and return that; ``check`` runs
    between polls (it raises when waiting longer is pointless, e.g. a child died); TimeoutError after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (a warm shutdown: a worker finishes its task, cProfile writes its file), SIGKILL after
    ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class CeleryWorkers:
    """``celery worker --pool=solo`` subprocesses of ``bench.django_celery``, each with its log in ``logdir``;
    a worker is ready when it has pushed its ``ready`` note (``bench.django_celery``); all stopped by
    :meth:`stop`. ``env`` is added to every worker's environment."""

    def __init__(self, logdir: Path, env: dict[str, str] | None = None) -> None:
        self.logdir, self.env = logdir, env or {}
        #: (name, group, process) of every worker started and not stopped yet
        self.procs: list[tuple[str, str, subprocess.Popen]] = []

    def start(self, names: list[str], queue: str, group: str = "", env: dict[str, str] | None = None,
              profile_dir: Path | None = None, ready_timeout: float = 60) -> None:
        """One worker per name on ``queue``, under cProfile (a file per worker in ``profile_dir``) if given;
        returns when all are ready."""
        from bench.django_programs import note_key, redis_client

        for i, name in enumerate(names):
            prefix = [sys.executable]
            if profile_dir is not None:
                prefix += ["-m", "cProfile", "-o", str(profile_dir / f"worker-{group}-{i + 1}.prof")]
            cmd = [*prefix, "-m", "celery", "-A", "bench.django_celery", "worker", "--pool=solo",
                   "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
                   "-Q", queue, "-n", f"{name}@%h"]
            child_env = {**os.environ, **self.env, **(env or {}), "DURABLE_BENCH_WORKER": name}
            with open(self.logdir / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append((name, group, proc))
        r = redis_client()
        wait_for(lambda: all(r.exists(note_key("ready", n)) for n in names), ready_timeout, "workers to be ready",
                 interval=0.05, check=self.check)

    def check(self) -> None:
        """Raise if a worker exited (with the end of its log)."""
        for name, _, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker {name} exited:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self, group: str | None = None) -> list[int]:
        """Pids of the running workers (of ``group`` only, if given)."""
        return [p.pid for _, g, p in self.procs if (group is None or g == group) and p.poll() is None]

    def stop(self) -> None:
        """Stop every worker (SIGTERM to all first, then wait; SIGKILL after 15 s) and delete its ready note."""
        from bench.django_programs import note_key, redis_client

        for _, _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, _, p in self.procs:
            stop_process(p)
            redis_client().delete(note_key("ready", name))
        self.procs = []
