"""Django settings of the fault-injection suite (``python -m bench faults``, see bench/faults/).

Chosen by environment variables that :func:`bench.faults.run_suite` sets for
itself and for every process it starts:

* ``DURABLE_FAULTS_DB``: ``pg`` (PostgreSQL on 127.0.0.1, database
  ``DURABLE_FAULTS_PG_NAME``, default ``durable_faults``) or ``sqlite`` (the
  file ``DURABLE_FAULTS_SQLITE``, with the example project's WAL options);
* ``DURABLE_FAULTS_BROKER``: the private redis-server the suite started (it
  restarts that one, never a shared server);
* ``DURABLE_FAULTS_LEASE``, ``DURABLE_FAULTS_VISIBILITY``: lease seconds and
  the Redis visibility timeout, after which a killed worker's unacknowledged
  messages are delivered again;
* ``DURABLE_FAULTS_PG_PORT``: the PostgreSQL port (default 5432; the
  database-restart and partition scenarios point it at their private server,
  or at the TCP proxy in front of it for the worker they cut off).

The PostgreSQL connection options are the ones the README recommends for
workers that must survive database restarts and partitions (a connect
timeout, TCP keepalives, ``tcp_user_timeout``), with short test values.
"""

from __future__ import annotations

import os

# Set before the example settings are imported, so they never create a filesystem broker.
os.environ["CELERY_BROKER_URL"] = os.environ.get("DURABLE_FAULTS_BROKER", "redis://127.0.0.1:6390/0")

from example_project.settings import SQLITE_OPTIONS  # noqa: E402

SECRET_KEY = "durable-faults-not-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "durable_django", "bench.faultapp"]

if os.environ.get("DURABLE_FAULTS_DB", "pg") == "sqlite":
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DURABLE_FAULTS_SQLITE"],
                             "OPTIONS": dict(SQLITE_OPTIONS)}}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "USER": "postgres", "HOST": "127.0.0.1",
                             "PORT": os.environ.get("DURABLE_FAULTS_PG_PORT", "5432"),
                             "NAME": os.environ.get("DURABLE_FAULTS_PG_NAME", "durable_faults"),
                             "OPTIONS": {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 5,
                                         "keepalives_interval": 2, "keepalives_count": 3,
                                         "tcp_user_timeout": 10000}}}

CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": float(os.environ.get("DURABLE_FAULTS_VISIBILITY", "10")),
                                   "unacked_restore_interval": 2, "unacked_restore_throttle": 1}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # a broker restart must never make a worker give up
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_DB_REUSE_MAX = 1000

DURABLE = {
    "QUEUE": os.environ.get("DURABLE_FAULTS_QUEUE", "durable-faults"),
    "LEASE_SECONDS": float(os.environ.get("DURABLE_FAULTS_LEASE", "3")),
    "SWEEP_INTERVAL": 1.0,
    "ETA_MAX_SECONDS": 60,
    "CHANNEL_LAYER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"durable_django": {"handlers": ["console"], "level": "WARNING"}},
}
