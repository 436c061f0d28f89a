"""Settings of the example project.

Embedded defaults need no server: SQLite in ``var/db.sqlite3`` and a
filesystem Celery broker in ``var/broker``. Production parts are selected by
environment variables: ``DATABASE_URL`` (PostgreSQL), ``CELERY_BROKER_URL``
(Redis or RabbitMQ), ``REDIS_URL`` (channels_redis).

Two modes. Development (no environment, or ``DJANGO_DEBUG=1``): ``DEBUG`` on
and a development secret key that is published in this repository. Production
(``DJANGO_DEBUG=0``): ``DJANGO_SECRET_KEY`` is required (the project refuses
to start without it, or with the development key), HTTPS is enforced (SSL
redirect, secure cookies) and HSTS, the proxy header, the hosts and the trusted
origins come from the environment, so that ``manage.py check --deploy`` passes::

    DJANGO_DEBUG=0
    DJANGO_SECRET_KEY=<50+ random characters>     # python -c "import secrets; print(secrets.token_urlsafe(50))"
    DJANGO_ALLOWED_HOSTS=expenses.example.com
    DJANGO_CSRF_TRUSTED_ORIGINS=https://expenses.example.com
    DJANGO_SECURE_HSTS_SECONDS=31536000
    DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS=1
    DJANGO_SECURE_HSTS_PRELOAD=1
    DJANGO_SECURE_PROXY_SSL_HEADER=1              # only behind a proxy that sets X-Forwarded-Proto
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from durable_django.conf import beat_schedule

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DURABLE_VAR_DIR", BASE_DIR / "var"))

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def env_bool(name: str, default: bool) -> bool:
    """A yes/no environment variable; anything unrecognised is an error, never a silent default."""
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: use 1 or 0")


def env_list(name: str, default: str = "") -> list[str]:
    """A comma-separated environment variable, without empty entries."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)

# !!! DEVELOPMENT ONLY !!! This key is published in the repository: anyone can forge sessions, password-reset
# links and (through the state-signing key durable_django derives from it) durable state with it. It is used only
# while DEBUG is on; with DJANGO_DEBUG=0 the project refuses to start unless DJANGO_SECRET_KEY is set to a secret.
DEV_SECRET_KEY = "dev-only-insecure-key-change-me-0123456789"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not DEBUG and (not SECRET_KEY.strip() or SECRET_KEY == DEV_SECRET_KEY):
    raise ImproperlyConfigured(
        "Production mode (DJANGO_DEBUG=0) needs a secret key: set DJANGO_SECRET_KEY to at least 50 random "
        "characters (python -c \"import secrets; print(secrets.token_urlsafe(50))\"). The development key in "
        "example_project/settings.py is public and is refused.")
if not SECRET_KEY:
    SECRET_KEY = DEV_SECRET_KEY
# Old keys still accepted while rotating (sessions, and durable state signed before the rotation).
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

# HTTPS. Development serves plain HTTP; production redirects to HTTPS and sends cookies over HTTPS only
# (each can be turned off, e.g. DJANGO_SECURE_SSL_REDIRECT=0 when a proxy already redirects).
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", not DEBUG)
# HSTS is off until asked for: browsers remember it (start small, then 31536000 once HTTPS works everywhere).
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):  # only behind a proxy that sets (and strips) this header
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "daphne",  # first: `runserver` serves ASGI (websockets)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "durable_django",
    "durable_django.humantasks",
    "example_project.expenses",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    # Project templates first: example_project/templates/durable_django/layout.html puts the task pages in the
    # expense pages' layout.
    "DIRS": [BASE_DIR / "example_project" / "templates"],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

SQLITE_OPTIONS = {"transaction_mode": "IMMEDIATE", "timeout": 30,
                  "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}


def _database() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL")
    db: dict[str, Any]
    if url:
        db = dict(dj_database_url.parse(url, conn_max_age=0))
    else:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "db.sqlite3")}
    if "sqlite" in db["ENGINE"]:
        db["OPTIONS"] = {**SQLITE_OPTIONS, **db.get("OPTIONS", {})}
    # A test run hands its test database to worker subprocesses through this variable.
    if os.environ.get("DURABLE_TEST_DB_NAME"):
        db["NAME"] = os.environ["DURABLE_TEST_DB_NAME"]
    return db


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# -- Channels (live status) -----------------------------------------------------
# Embedded: the in-memory layer (per process; the status consumers poll the
# database for a worker's changes). REDIS_URL: channels_redis across processes.
if os.environ.get("REDIS_URL"):
    # redis-py 8 reads with a 5 s socket timeout by default, which aborts channels_redis' blocking
    # 5 s BZPOPMIN and tears consumers down (django/channels_redis#422): allow longer reads.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                  "CONFIG": {"hosts": [{"address": os.environ["REDIS_URL"], "socket_timeout": 30,
                                                        "socket_connect_timeout": 5}],
                                             "prefix": os.environ.get("CHANNELS_PREFIX", "asgi")}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # Deliberate in the embedded setup: the consumers poll the database for the workers' changes
    # (durable_django.W004 warns about exactly this; a production project sets REDIS_URL instead).
    SILENCED_SYSTEM_CHECKS = ["durable_django.W004"]
# The example's escalation timer: finance has this many seconds before the director is asked too.
EXPENSES_ESCALATE_AFTER = float(os.environ.get("EXPENSES_ESCALATE_AFTER", "120"))
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# -- Celery --------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem"):
    _broker_dir = Path(os.environ.get("DURABLE_BROKER_DIR", VAR_DIR / "broker"))
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "control").mkdir(parents=True, exist_ok=True)
    # control_folder: kombu keeps its exchange tables (pidbox, ...) there; its default is ./control,
    # a folder in whatever directory the worker was started from.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir), "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"), "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
        "polling_interval": float(os.environ.get("DURABLE_BROKER_POLL", "0.2")),
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep the worker's database connection across tasks (reopened every ~1,000 tasks). Without it Celery's
# Django fixup closes it before and after every task, so each wake-up opens a new connection (3-8 ms on
# PostgreSQL). durable_django's task closes a connection an earlier task left broken.
CELERY_DB_REUSE_MAX = int(os.environ.get("CELERY_DB_REUSE_MAX", "1000"))

# -- durable_django ------------------------------------------------------------
DURABLE: dict[str, Any] = {
    "LEASE_SECONDS": float(os.environ.get("DURABLE_LEASE_SECONDS", "60")),
    "SWEEP_INTERVAL": float(os.environ.get("DURABLE_SWEEP_INTERVAL", "30")),
    "RUN_INLINE": os.environ.get("DURABLE_RUN_INLINE", "0") == "1",
}
CELERY_BEAT_SCHEDULE = {**beat_schedule(DURABLE["SWEEP_INTERVAL"])}
# Telemetry (docs/telemetry.md), off by default. DURABLE_TELEMETRY=console: spans printed to the console, the
# metrics at /durable/metrics (for staff, or with DURABLE_METRICS_TOKEN as a bearer token), logs at INFO.
if os.environ.get("DURABLE_TELEMETRY") == "console":
    from example_project.telemetry import install as _install_telemetry

    _install_telemetry()
    DURABLE["TELEMETRY"] = {"traces": True, "metrics": True, "logs": True}
    if os.environ.get("DURABLE_METRICS_TOKEN"):
        DURABLE["TELEMETRY"]["metrics_token"] = os.environ["DURABLE_METRICS_TOKEN"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"durable_django": {"handlers": ["console"], "level": os.environ.get("DURABLE_LOG_LEVEL", "INFO")}},
}
