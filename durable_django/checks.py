"""System checks for the ``DURABLE`` settings and the pieces the app relies on."""

from __future__ import annotations

import importlib.util

import django
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from . import telemetry
from .conf import DEFAULTS, durable_settings
from .flowcontrol import Limits
from .limits import EVENT_NAME_COLUMN, INSTANCE_ID_COLUMN
from .schedules import spec_from_setting


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs) -> list:
    errors: list = []
    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict):
        return [Error("DURABLE must be a dict.", id="durable_django.E001")]
    for name in sorted(set(user) - set(DEFAULTS)):
        errors.append(Error(f"Unknown DURABLE setting {name!r}.", hint=f"Known settings: {', '.join(DEFAULTS)}.",
                            id="durable_django.E001"))
    key = user.get("SIGNING_KEY")
    if key is not None and (not isinstance(key, str | bytes) or len(key) < 16):
        errors.append(Error("DURABLE['SIGNING_KEY'] must be a str or bytes of at least 16 characters.",
                            hint="Leave it unset to derive a key from SECRET_KEY.", id="durable_django.E002"))
    if key is None and not getattr(settings, "SECRET_KEY", None):
        errors.append(Error("No signing key: DURABLE['SIGNING_KEY'] and SECRET_KEY are both empty.",
                            id="durable_django.E002"))
    errors.extend(_check_fallbacks(user))
    for name in ("LEASE_SECONDS", "SWEEP_INTERVAL", "ETA_MAX_SECONDS", "STATUS_POLL_INTERVAL", "BATCH_SECONDS"):
        value = user.get(name, DEFAULTS[name])
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            errors.append(Error(f"DURABLE['{name}'] must be a positive number, got {value!r}.",
                                id="durable_django.E003"))
    sync = user.get("CLOCK_SYNC_SECONDS", DEFAULTS["CLOCK_SYNC_SECONDS"])
    if not isinstance(sync, int | float) or isinstance(sync, bool) or not sync >= 0:
        errors.append(Error(f"DURABLE['CLOCK_SYNC_SECONDS'] must be a number >= 0, got {sync!r}.",
                            hint="0 means each worker's own clock; the default 60 follows the database's clock.",
                            id="durable_django.E003"))
    errors += _check_cancel(user)
    for name in ("MAX_ATTEMPTS", "SWEEP_BATCH", "MAX_ROUNDS", "BATCH_SIZE"):
        value = user.get(name, DEFAULTS[name])
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(Error(f"DURABLE['{name}'] must be a positive integer, got {value!r}.",
                                id="durable_django.E003"))
    history = user.get("HISTORY")
    if history is not None and history is not True and (
            not isinstance(history, int) or isinstance(history, bool) or history < 1):
        errors.append(Error(f"DURABLE['HISTORY'] must be None, True or an integer >= 1, got {history!r}.",
                            hint="The number of checkpoints kept per instance for forks (docs/fork.md).",
                            id="durable_django.E003"))
    if not isinstance(user.get("PREPARED_STATEMENTS", True), bool):
        errors.append(Error("DURABLE['PREPARED_STATEMENTS'] must be True or False.", id="durable_django.E003"))
    queue = user.get("QUEUE")
    if queue is not None and (not isinstance(queue, str) or not queue):
        errors.append(Error("DURABLE['QUEUE'] must be a non-empty string or None.", id="durable_django.E004"))
    progs = user.get("PROGRAMS")
    if progs is not None and (isinstance(progs, str) or not all(isinstance(p, str) for p in progs)):
        errors.append(Error("DURABLE['PROGRAMS'] must be a list of dotted paths (or prefixes ending in '.').",
                            id="durable_django.E005"))
    alias = user.get("CHANNEL_LAYER", DEFAULTS["CHANNEL_LAYER"])
    if alias is not None and (not isinstance(alias, str) or not alias):
        errors.append(Error("DURABLE['CHANNEL_LAYER'] must be an alias of CHANNEL_LAYERS or None.",
                            id="durable_django.E006"))
    hook = user.get("ON_CHECKPOINT")
    if hook is not None:
        try:
            if not callable(import_string(hook)):
                raise ImportError(f"{hook} is not callable")
        except (ImportError, TypeError) as exc:
            errors.append(Error(f"DURABLE['ON_CHECKPOINT'] must be the dotted path of a callable: {exc}",
                                id="durable_django.E007"))
    errors += _check_limits(user)
    lease = user.get("LEASE_SECONDS", DEFAULTS["LEASE_SECONDS"])
    sweep = user.get("SWEEP_INTERVAL", DEFAULTS["SWEEP_INTERVAL"])
    if isinstance(lease, int | float) and isinstance(sweep, int | float) and lease < 2:
        errors.append(Warning("DURABLE['LEASE_SECONDS'] below 2 s: a slow step will look like a dead worker.",
                              id="durable_django.W001"))
    return errors


def _check_cancel(user: dict) -> list:
    """The cancellation settings: finite numbers (a NaN would never compare, so nothing would be forced)."""
    errors: list[CheckMessage] = []
    grace = user.get("CANCEL_GRACE_SECONDS", DEFAULTS["CANCEL_GRACE_SECONDS"])
    if not isinstance(grace, int | float) or isinstance(grace, bool) or not 0 < grace < 10 ** 9:
        errors.append(Error(f"DURABLE['CANCEL_GRACE_SECONDS'] must be a positive number of seconds (below 1e9), "
                            f"got {grace!r}.", hint="After it, an instance still cleaning up after a cancel is "
                            "ended at once by the sweep; the default is 300.", id="durable_django.E003"))
    check = user.get("CANCEL_CHECK_SECONDS", DEFAULTS["CANCEL_CHECK_SECONDS"])
    if not isinstance(check, int | float) or isinstance(check, bool) or not 0 <= check < 10 ** 9:
        errors.append(Error(f"DURABLE['CANCEL_CHECK_SECONDS'] must be a number >= 0, got {check!r}.",
                            hint="0 reads the cancel flag at every checkpoint; the default 1.0 at most once a "
                                 "second.", id="durable_django.E003"))
    return errors


def _check_fallbacks(user: dict) -> list:
    """Every fallback key must be a real key: a None entry (``[os.environ.get("OLD_KEY")]`` with the variable
    unset) or an empty one would otherwise be a key anyone can sign with."""
    errors: list = []
    fallbacks = user.get("SIGNING_KEY_FALLBACKS")
    if fallbacks is not None:
        name = "DURABLE['SIGNING_KEY_FALLBACKS']"
        if isinstance(fallbacks, str | bytes) or not isinstance(fallbacks, list | tuple):
            return [Error(f"{name} must be a list of keys (str or bytes of at least 16 characters).",
                          id="durable_django.E008")]
        for i, k in enumerate(fallbacks):
            if not isinstance(k, str | bytes) or len(k) < 16:
                errors.append(Error(
                    f"{name}[{i}] is {_describe(k)}: every fallback key must be a str or bytes of at least 16 "
                    "characters.",
                    hint="An unset environment variable gives None (os.environ.get): leave such an entry out of "
                         "the list instead.", id="durable_django.E008"))
    elif user.get("SIGNING_KEY") is None:
        olds = getattr(settings, "SECRET_KEY_FALLBACKS", None) or []
        if isinstance(olds, str | bytes) or not isinstance(olds, list | tuple):
            return [Error("SECRET_KEY_FALLBACKS must be a list (durable state keys are derived from it).",
                          id="durable_django.E008")]
        for i, k in enumerate(olds):
            if not isinstance(k, str | bytes) or not k:
                errors.append(Error(
                    f"SECRET_KEY_FALLBACKS[{i}] is {_describe(k)}: durable state signing keys are derived from "
                    "it, and a key derived from nothing is one anyone can sign with.",
                    hint="Leave empty or unset entries out of the list.", id="durable_django.E008"))
    return errors


def _describe(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, str | bytes):
        return "empty" if not value else f"only {len(value)} characters long"
    return f"a {type(value).__name__}"


def _check_limits(user: dict) -> list:
    """The input limits (durable_django.limits): positive integers, ids and names no longer than their columns."""
    errors: list[CheckMessage] = []
    bounds = {"MAX_PAYLOAD_BYTES": (4, None), "MAX_ARGUMENT_BYTES": (64, None), "MAX_JSON_DEPTH": (1, 10_000),
              "MAX_INSTANCE_ID_LENGTH": (1, INSTANCE_ID_COLUMN), "MAX_EVENT_NAME_LENGTH": (1, EVENT_NAME_COLUMN)}
    for name, (low, high) in bounds.items():
        value = user.get(name, DEFAULTS[name])
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
            within = f"between {low} and {high}" if high else f"at least {low}"
            errors.append(Error(f"DURABLE['{name}'] must be an integer {within}, got {value!r}.",
                                hint="The id and name limits cannot exceed their database columns." if high
                                and "LENGTH" in name else None, id="durable_django.E020"))
    payload = user.get("MAX_PAYLOAD_BYTES", DEFAULTS["MAX_PAYLOAD_BYTES"])
    upload = getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None)
    if isinstance(payload, int) and isinstance(upload, int) and payload + 8192 > upload:
        errors.append(Warning(
            f"DURABLE['MAX_PAYLOAD_BYTES'] ({payload}) is more than DATA_UPLOAD_MAX_MEMORY_SIZE ({upload}) lets "
            "a request carry: the publish view answers 413 to payloads below the limit.",
            hint="Raise DATA_UPLOAD_MAX_MEMORY_SIZE to at least MAX_PAYLOAD_BYTES + 8192, or lower the limit.",
            id="durable_django.W020"))
    return errors


# The oldest Django release the app is tested on (noxfile.py, docs/install.md); pyproject.toml says the same.
OLDEST_DJANGO = (5, 2)


@register(Tags.compatibility)
def check_django_version(app_configs=None, **kwargs) -> list:
    """An older Django can come from a project's own pin (the package's bound applies only to its extra)."""
    if django.VERSION[:2] >= OLDEST_DJANGO:
        return []
    oldest = ".".join(map(str, OLDEST_DJANGO))
    return [Error(f"durable_django needs Django {oldest} or newer; this is Django {django.get_version()}.",
                  hint=f"pip install 'django>={oldest}' (see docs/install.md for the supported versions).",
                  id="durable_django.E030")]


@register(Tags.database)
def check_database(app_configs=None, databases=None, **kwargs) -> list:
    """SQLite with a web process and workers needs IMMEDIATE transactions and a busy timeout."""
    db = settings.DATABASES.get("default", {})
    if "sqlite" not in db.get("ENGINE", ""):
        return []
    options = db.get("OPTIONS", {})
    if options.get("transaction_mode") != "IMMEDIATE" or not options.get("timeout"):
        if django.VERSION[:2] < (5, 1):
            # Before 5.1 the SQLite backend passes unknown OPTIONS to sqlite3.connect(): the hint would crash.
            hint = (f"Upgrade Django (this is {django.get_version()}): the 'transaction_mode' option needs "
                    "Django 5.1, and durable_django needs 5.2 (durable_django.E030).")
        else:
            hint = "OPTIONS={'transaction_mode': 'IMMEDIATE', 'timeout': 20, 'init_command': " \
                   "'PRAGMA journal_mode=WAL;'}"
        return [Warning("SQLite without OPTIONS transaction_mode='IMMEDIATE' and a timeout: workers and the web "
                        "process will hit 'database is locked'.", hint=hint, id="durable_django.W002")]
    return []


@register(Tags.compatibility)
def check_celery(app_configs=None, **kwargs) -> list:
    if getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False):
        return [Warning("CELERY_TASK_ALWAYS_EAGER runs durable instances inside the caller's transaction.",
                        hint="Use DURABLE['RUN_INLINE']=True for worker-less runs instead.",
                        id="durable_django.W003")]
    user = getattr(settings, "DURABLE", {})
    inline = isinstance(user, dict) and user.get("RUN_INLINE", DEFAULTS["RUN_INLINE"])
    engine = settings.DATABASES.get("default", {}).get("ENGINE", "")
    if not inline and "sqlite" not in engine and getattr(settings, "CELERY_DB_REUSE_MAX", None) is None:
        return [Warning(
            "CELERY_DB_REUSE_MAX is not set: Celery's Django fixup closes the database connection before and "
            "after every task, so every wake-up of a durable instance first opens a new connection (2-8 ms on "
            "PostgreSQL, most of the time from publish_event to the instance running).",
            hint="Set CELERY_DB_REUSE_MAX = 1000 (the worker then reopens its connection every 1000 tasks), or "
                 "add 'durable_django.W005' to SILENCED_SYSTEM_CHECKS if your Celery app is configured elsewhere.",
            id="durable_django.W005")]
    return []


IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"


def _is_in_memory(backend) -> bool:
    if backend == IN_MEMORY_LAYER:
        return True
    if not isinstance(backend, str):
        return False
    try:
        from channels.layers import InMemoryChannelLayer
        from django.utils.module_loading import import_string

        cls = import_string(backend)
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, InMemoryChannelLayer)


@register(Tags.compatibility)
def check_channel_layer(app_configs=None, **kwargs) -> list:
    """The in-memory layer never carries a worker process's status push to the web process."""
    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict) or user.get("RUN_INLINE", DEFAULTS["RUN_INLINE"]):
        return []  # instances run in the web process: its in-memory layer reaches its consumers
    alias = user.get("CHANNEL_LAYER", DEFAULTS["CHANNEL_LAYER"])
    config = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(alias) if isinstance(alias, str) else None
    if not isinstance(config, dict) or not _is_in_memory(config.get("BACKEND")):
        return []
    interval = user.get("STATUS_POLL_INTERVAL", DEFAULTS["STATUS_POLL_INTERVAL"])
    return [Warning(
        f"CHANNEL_LAYERS[{alias!r}] is the in-memory layer but instances run in separate worker processes: "
        f"their live status pushes never reach the websocket consumers, which poll the database every "
        f"{interval} s instead (DURABLE['STATUS_POLL_INTERVAL']).",
        hint="Use a cross-process layer (channels_redis.core.RedisChannelLayer) in production, or add "
             "'durable_django.W004' to SILENCED_SYSTEM_CHECKS if polling is what you want.",
        id="durable_django.W004")]


# -- telemetry (E060-E069) ----------------------------------------------------
@register(Tags.compatibility)
def check_telemetry(app_configs=None, **kwargs) -> list:
    """``DURABLE["TELEMETRY"]``: known keys, booleans, and the libraries that what is on needs (never imported here)."""
    user = getattr(settings, "DURABLE", {})
    value = user.get("TELEMETRY", DEFAULTS["TELEMETRY"]) if isinstance(user, dict) else None
    if value is None:
        return []
    if not isinstance(value, dict):
        return [Error(f"DURABLE['TELEMETRY'] must be a dict such as {{'traces': True}}, got {value!r}.",
                      id="durable_django.E060")]
    errors: list = []
    for key in sorted(set(value) - set(telemetry.KEYS)):
        errors.append(Error(f"Unknown DURABLE['TELEMETRY'] key {key!r}.",
                            hint=f"Known keys: {', '.join(telemetry.KEYS)}.", id="durable_django.E060"))
    for key in ("traces", "metrics", "logs"):
        if not isinstance(value.get(key, False), bool):
            errors.append(Error(f"DURABLE['TELEMETRY']['{key}'] must be True or False.", id="durable_django.E060"))
    for key, module in telemetry.LIBRARIES.items():
        if value.get(key) is True and importlib.util.find_spec(module.split(".")[0]) is None:
            extra = "otel" if key == "traces" else "prometheus"
            errors.append(Error(f"DURABLE['TELEMETRY']['{key}'] is on but {module.split('.')[0]} is not installed.",
                                hint=f"pip install 'durable-django[{extra}]'", id="durable_django.E061"))
    if value.get("steps", "spans") not in ("spans", "events"):
        errors.append(Error("The DURABLE['TELEMETRY'] key 'steps' must be 'spans' (the default) or 'events'.",
                            id="durable_django.E060"))
    registry = value.get("registry")
    if registry is not None and not isinstance(registry, str):
        errors.append(Error("The DURABLE['TELEMETRY'] key 'registry' must be the dotted path of a CollectorRegistry.",
                            id="durable_django.E062"))
    token = value.get("metrics_token")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        errors.append(Error("The DURABLE['TELEMETRY'] key 'metrics_token' must be a string of at least 16 characters.",
                            id="durable_django.E063"))
    return errors


# -- Schedules (docs/schedules.md): E040-E049 -------------------------------------------------
@register(Tags.compatibility)
def check_schedules(app_configs=None, **kwargs) -> list:
    """``DURABLE["SCHEDULES"]`` entries that could not be synced, the firing interval, and cronsim's presence."""
    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict):
        return []
    errors: list = []
    declared = user.get("SCHEDULES", DEFAULTS["SCHEDULES"])
    if not isinstance(declared, dict):
        errors.append(Error("DURABLE['SCHEDULES'] must be a dict of name -> schedule.", id="durable_django.E040"))
        declared = {}
    for name, entry in declared.items():
        try:
            spec_from_setting(name, entry)
        except ImportError:
            errors.append(Error("Cron schedules need the cronsim package.", hint="pip install 'durable-django[django]'",
                                id="durable_django.E042"))
        except ValueError as exc:
            errors.append(Error(f"DURABLE['SCHEDULES'][{name!r}]: {exc}", id="durable_django.E040"))
    for name in ("SCHEDULE_INTERVAL", "SCHEDULE_GRACE_SECONDS", "SCHEDULE_BATCH"):
        value = user.get(name, DEFAULTS[name])
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            errors.append(Error(f"DURABLE['{name}'] must be a positive number, got {value!r}.",
                                id="durable_django.E041"))
    return errors


# -- Progress from inside a process (docs/progress.md): E070-E079 ------------------------------
@register(Tags.compatibility)
def check_progress_settings(app_configs=None, **kwargs) -> list:
    """The progress limits (docs/progress.md): integers in range (E070), a positive poll interval (E071)."""
    user = durable_settings.user_settings()
    errors: list[CheckMessage] = []
    for name, low in (("MAX_STATUS_BYTES", 2), ("MAX_PUBLISHED_KEYS", 1)):
        value = user.get(name, DEFAULTS[name])
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            errors.append(Error(f"DURABLE['{name}'] must be an integer of at least {low}, got {value!r}.",
                                id="durable_django.E070"))
    interval = user.get("VALUE_POLL_MAX_INTERVAL", DEFAULTS["VALUE_POLL_MAX_INTERVAL"])
    if not isinstance(interval, int | float) or isinstance(interval, bool) or not 0 < interval <= 3600:
        errors.append(Error(f"DURABLE['VALUE_POLL_MAX_INTERVAL'] must be a number of seconds above 0 (at most "
                            f"3600), got {interval!r}.", id="durable_django.E071"))
    return errors


# -- flow control (E050-E059) --------------------------------------------------------------------
@register(Tags.compatibility)
def check_flow_control(app_configs=None, **kwargs) -> list:
    """``DURABLE["LIMITS"]``, ``QUEUES`` and ``MESSAGE_PRIORITY`` (docs/flow-control.md)."""
    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict):
        return []
    errors: list = []
    limits = user.get("LIMITS", {})
    if not isinstance(limits, dict):
        errors.append(Error("DURABLE['LIMITS'] must be a dict of program path -> options.", id="durable_django.E050"))
        limits = {}
    for path, options in limits.items():
        if not isinstance(options, dict):
            errors.append(Error(f"DURABLE['LIMITS'][{path!r}] must be a dict of options.", id="durable_django.E050"))
            continue
        try:
            Limits.build(options)
        except (TypeError, ValueError, ImportError) as exc:
            errors.append(Error(f"DURABLE['LIMITS'][{path!r}]: {exc}", hint="See docs/flow-control.md.",
                                id="durable_django.E051"))
    queues = user.get("QUEUES", [])
    if isinstance(queues, str) or not isinstance(queues, list | tuple) or not all(
            isinstance(q, str) and q for q in queues):
        errors.append(Error("DURABLE['QUEUES'] must be a list of queue names.", id="durable_django.E052"))
    if user.get("MESSAGE_PRIORITY", False) not in (False, True, "inverted"):
        errors.append(Error("DURABLE['MESSAGE_PRIORITY'] must be False, True or 'inverted'.",
                            id="durable_django.E053"))
    return errors
