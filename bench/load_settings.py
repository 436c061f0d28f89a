"""Django settings of the load suite (``python -m bench load``).

The Django benchmark's settings (``bench.django_settings``: PostgreSQL on
127.0.0.1, Redis broker, ``DEBUG=False``) plus what the admin needs (auth,
sessions, messages, a URLconf with the admin) and the human-task app, as in
the example project. The database is ``DURABLE_BENCH_PG_NAME`` (default
``durable_load``), the broker ``DURABLE_BENCH_BROKER`` (default Redis DB 12)
and the queue ``DURABLE_BENCH_QUEUE``; the load suite sets all three for its
child processes.
"""

from __future__ import annotations

import os

os.environ.setdefault("DURABLE_BENCH_PG_NAME", "durable_load")
os.environ.setdefault("DURABLE_BENCH_BROKER", "redis://127.0.0.1:6379/12")
os.environ.setdefault("CELERY_BROKER_URL", os.environ["DURABLE_BENCH_BROKER"])
os.environ.setdefault("DURABLE_BENCH_QUEUE", "durable-load")

from bench.django_settings import *  # noqa: E402,F403
from example_project.settings import MIDDLEWARE, TEMPLATES  # noqa: E402,F401  (the admin's)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "durable_django",
    "durable_django.humantasks",
]
ROOT_URLCONF = "bench.load_urls"
ALLOWED_HOSTS = ["localhost", "testserver"]
# The admin's pages only; a fast hasher so logging the benchmark's superuser in costs nothing measurable.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_URL = "static/"

# Another PostgreSQL server than the development machine's (the smoke test passes the one of DATABASE_URL).
if os.environ.get("DURABLE_LOAD_PG_URL"):
    import dj_database_url

    DATABASES = {"default": {**dj_database_url.parse(os.environ["DURABLE_LOAD_PG_URL"], conn_max_age=600),
                             "NAME": os.environ["DURABLE_BENCH_PG_NAME"]}}
