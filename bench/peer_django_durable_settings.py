"""Django settings of the peer benchmark's django-durable child (``bench/peer_dd.py``).

``PEERS_DD_DB=pg`` uses the PostgreSQL database ``peers_dd`` on 127.0.0.1;
``sqlite`` the file named by ``PEERS_DD_SQLITE`` with the same SQLite options
as durable_django's example project (WAL, ``synchronous=NORMAL``, IMMEDIATE
transactions), so both Django-based systems run on identical databases.
"""

from __future__ import annotations

import os

SECRET_KEY = "peers-bench-not-secret-0123456789abcdef"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_durable"]

if os.environ.get("PEERS_DD_DB", "pg") == "sqlite":
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["PEERS_DD_SQLITE"],
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30,
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}}}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "peers_dd", "USER": "postgres",
                             "HOST": "127.0.0.1", "PORT": "5432", "CONN_MAX_AGE": 600}}
