"""Start the whole demo: migrations, demo users, ASGI server, Celery worker with the beat scheduler.

Embedded defaults need no service (SQLite + filesystem broker + in-memory
channel layer with database polling); ``DATABASE_URL``, ``CELERY_BROKER_URL``
and ``REDIS_URL`` switch to PostgreSQL, Redis and channels_redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from .demo_users import FORCE_FLAG, refuse_unless_demo

ROOT = Path(settings.BASE_DIR)


class Command(BaseCommand):
    help = "Run the expense-approval demo (web server + worker + scheduler) until Ctrl-C."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--smoke", action="store_true",
                            help="Start everything, check the site answers, then stop (for CI).")
        parser.add_argument(FORCE_FLAG, dest="force", action="store_true",
                            help="Run (and create the demo logins) even though DEBUG is off and the database is "
                                 "not the demo's SQLite.")

    def handle(self, *args, host: str, port: int, smoke: bool, force: bool = False, **options) -> None:
        refuse_unless_demo(force)  # before anything is written
        self.stdout.write("Migrating...")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Demo logins (username / password):")
        call_command("demo_users", stdout=self.stdout, force=True)
        var = Path(os.environ.get("DURABLE_VAR_DIR", ROOT / "var"))
        var.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE",
                                                                      "example_project.settings")}
        procs = {
            "web": [sys.executable, "manage.py", "runserver", f"{host}:{port}", "--noreload"],
            "worker": [sys.executable, "-m", "celery", "-A", "example_project", "worker", "--pool=solo", "-B",
                       "--loglevel=INFO", "-s", str(var / "celerybeat-schedule"), "--without-gossip",
                       "--without-mingle", "--without-heartbeat"],
        }
        running: dict[str, subprocess.Popen] = {}

        def stop(signum, frame):  # Ctrl-C, and SIGTERM too (a background job ignores SIGINT)
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for name, cmd in procs.items():
            running[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        url = f"http://{host}:{port}/"
        try:
            if not self._wait_for(url, running["web"]):
                self.stderr.write("The web server did not start.")
                return
            self.stdout.write(self.style.SUCCESS(
                f"\nDemo running at {url}  (admin: {url}admin/, tasks: {url}durable/tasks/)\n"
                "Log in as alice and submit an expense; log in as bob in another browser (or a private window)\n"
                "and approve it under 'My tasks'; 1000 or more also needs carol (finance). Ctrl-C stops everything."))
            if smoke:
                return
            while all(p.poll() is None for p in running.values()):
                time.sleep(0.5)
            self.stderr.write("A demo process exited; stopping.")
        except KeyboardInterrupt:
            pass
        finally:
            for p in running.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in running.values():
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)

    def _wait_for(self, url: str, proc: subprocess.Popen, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "accounts/login/", timeout=2):
                    return True
            except OSError:
                time.sleep(0.3)
        return False
