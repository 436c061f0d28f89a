"""Django settings of the durable_django benchmark (``python -m bench django``).

The database is chosen by ``DURABLE_BENCH_DB``: ``pg`` (PostgreSQL database
``durable_bench`` on 127.0.0.1, trust auth) or ``sqlite`` (the file named by
``DURABLE_BENCH_SQLITE``, with the example project's WAL options). The broker
is Redis DB 9 (``DURABLE_BENCH_BROKER``); every run uses its own queue
(``DURABLE_BENCH_QUEUE``), so it never picks up another run's messages.
"""

from __future__ import annotations

import json
import os

# Read before the example settings are imported, so they never create a filesystem broker.
os.environ.setdefault("CELERY_BROKER_URL", os.environ.get("DURABLE_BENCH_BROKER", "redis://127.0.0.1:6379/9"))

from example_project.settings import SQLITE_OPTIONS  # noqa: E402

SECRET_KEY = "durable-bench-not-secret-0123456789abcdef"
DEBUG = False  # DEBUG=True would record every query in memory
ALLOWED_HOSTS = ["localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "durable_django"]

_conn_max_age = os.environ.get("DURABLE_BENCH_CONN_MAX_AGE", "600")
if os.environ.get("DURABLE_BENCH_DB", "pg") == "sqlite":
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DURABLE_BENCH_SQLITE"],
                             "OPTIONS": dict(SQLITE_OPTIONS)}}
else:
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": os.environ.get("DURABLE_BENCH_PG_NAME", "durable_bench"),
        "USER": "postgres", "HOST": "127.0.0.1", "PORT": "5432",
        "CONN_MAX_AGE": None if _conn_max_age == "none" else int(_conn_max_age),
    }}

CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Unset (as in the example project): Celery's Django fixup closes the database connection before and
# after every task, whatever CONN_MAX_AGE says. The benchmark also runs workers with it set.
if os.environ.get("DURABLE_BENCH_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(os.environ["DURABLE_BENCH_DB_REUSE_MAX"])
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# No remote control: the workers leave no pidbox bindings in the shared Redis (the benchmark never uses it).
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False

DURABLE = {"QUEUE": os.environ.get("DURABLE_BENCH_QUEUE", "durable-bench"), "LEASE_SECONDS": 60,
           "RUN_INLINE": False,
           # The benchmark runs the same plain async defs natively and durably: allowed by path (docs/security.md).
           "PROGRAMS": ["bench."],
           # A/B comparisons of the app's settings: DURABLE_BENCH_DURABLE='{"PREPARED_STATEMENTS": false}'
           **json.loads(os.environ.get("DURABLE_BENCH_DURABLE") or "{}")}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"durable_django": {"handlers": ["console"], "level": "WARNING"}},
}
