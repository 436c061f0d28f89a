"""The ``DURABLE`` settings dict: defaults, strict lookup, reload on change.

Every option of the app lives in one dict in the project's settings::

    DURABLE = {"LEASE_SECONDS": 120, "QUEUE": "durable"}

Unknown keys are reported by the system check ``durable_django.E001`` and
raise ``AttributeError`` when read, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

#: Documented defaults: docs/reference/settings.md is generated from this dict and the comments above its keys.
DEFAULTS: dict[str, Any] = {
    # HMAC key for state blobs (str or bytes, at least 16 characters). None:
    # derived from SECRET_KEY, so blobs are always signed; there is no
    # "unsigned" setting. See docs/security.md.
    "SIGNING_KEY": None,
    # Older keys still accepted when verifying (key rotation); blobs are
    # always signed with SIGNING_KEY. None: derived from SECRET_KEY_FALLBACKS
    # when SIGNING_KEY is None, else no fallbacks. Empty or None entries are
    # refused (system check durable_django.E008, and ImproperlyConfigured).
    "SIGNING_KEY_FALLBACKS": None,
    # How long a worker owns an instance without checkpointing. A worker that
    # dies is replaced after this; a single step must be shorter than this.
    "LEASE_SECONDS": 60,
    # Celery queue the run task is sent to (None: Celery's default queue).
    "QUEUE": None,
    # True: a step's ORM writes commit in the same transaction as the
    # checkpoint that follows it (exactly-once database side effects).
    # False: autocommit; a step's writes may repeat after a crash.
    "ATOMIC_STEPS": True,
    # Extend the lease from a background thread while a step runs, so a step
    # may take longer than LEASE_SECONDS; a killed worker stops extending it.
    # A step that hangs forever then holds its instance forever: use Celery
    # time limits. False: a step longer than the lease is taken over.
    "HEARTBEAT": True,
    # Timers due within this many seconds are also sent with a Celery ETA;
    # later ones are left to the sweep (the guarantee either way).
    "ETA_MAX_SECONDS": 300,
    # Leases, timers and the sweep use the database's clock, not the worker's:
    # each process reads the database's time and re-reads it when its reading
    # is older than this (seconds); in between it counts with time.monotonic().
    # 0: use each worker's own clock (only if all clocks are synchronised).
    "CLOCK_SYNC_SECONDS": 60,
    # Interval of the periodic sweep (beat schedule and `durable_resume --loop`).
    "SWEEP_INTERVAL": 30,
    # Maximum instances one sweep schedules.
    "SWEEP_BATCH": 500,
    # An instance whose worker died this many times in a row without
    # reaching a checkpoint is suspended (poison-pill protection).
    "MAX_ATTEMPTS": 5,
    # Allowlist of program dotted paths (or prefixes ending in "."); when set,
    # it is the complete list (a plain async def may be listed). None: only
    # programs declared with make_durable() (or durable_django.register()).
    "PROGRAMS": None,
    # True: run instances in this process when their transaction commits,
    # without Celery (development, scripts, the synchronous command mode).
    "RUN_INLINE": False,
    # Safety valve: how many pause/resume rounds one task runs in a row.
    "MAX_ROUNDS": 100,
    # Live status: seconds between the consumers' database polls when the
    # channel layer cannot cross processes (none, or the in-memory layer).
    # With a cross-process layer (channels_redis) they rely on the push and
    # poll only every max(15, STATUS_POLL_INTERVAL) seconds as a safety net.
    "STATUS_POLL_INTERVAL": 1.0,
    # Alias in CHANNEL_LAYERS that transitions are pushed to and the status
    # consumers listen on. None: no push at all (the consumers poll).
    "CHANNEL_LAYER": "default",
    # Dotted path of a callable(instance_id, steps) called in the worker right
    # after each checkpoint commits: monitoring, or fault injection (the
    # crash-test suites kill the worker at a chosen checkpoint). None: no hook.
    "ON_CHECKPOINT": None,
    # PostgreSQL with psycopg 3: send the app's hot statements (checkpoint,
    # claim, event lookup) as server-side prepared statements (~0.1-0.3 ms
    # less per checkpoint). Set False behind a pooler in transaction mode
    # that cannot keep prepared statements (PgBouncer < 1.21).
    "PREPARED_STATEMENTS": True,
    # Wake-ups scheduled by one transaction (a burst of start() or
    # publish_event() calls, a sweep) travel as one Celery message per this
    # many instance ids; the worker claims them with one statement and runs
    # them one after the other. 1: one message per instance.
    "BATCH_SIZE": 50,
    # A worker running a batch hands the instances it has not started yet
    # back to the queue after this many seconds (other workers pick them up).
    "BATCH_SECONDS": 1.0,
    # Cancellation (docs/failures.md, "Cancellation"): cancel() raises InstanceCancelled inside the
    # program at its current await so that its except/finally blocks can clean up. An instance still
    # cleaning up this many seconds after the request is ended "cancelled" by the sweep, running
    # nothing more (as cancel(force=True) does at once).
    "CANCEL_GRACE_SECONDS": 300,
    # How often (seconds) a worker running an instance reads its cancel flag, at a checkpoint (one
    # SELECT of the row; none once a cancel is known). 0: at every checkpoint.
    "CANCEL_CHECK_SECONDS": 1.0,
    # Checkpoint history for forks (docs/fork.md): keep the last N checkpoints
    # of every instance (an int >= 1; True: all of them) in DurableCheckpoint
    # rows, written in the checkpoint's transaction. None: each program's own
    # make_durable(history=...) decides, and by default nothing is kept (the
    # saved state stays the size of what is live). A program's own history=
    # wins over this setting.
    "HISTORY": None,
    # Input limits (see docs/security.md, "Size limits"). Bad input is refused with a clear error and
    # nothing stored. Largest event payload, in bytes of its JSON text (UTF-8), from any entry point.
    "MAX_PAYLOAD_BYTES": 256 * 1024,
    # Largest start arguments, in bytes once pickled and signed: pass references, not data.
    "MAX_ARGUMENT_BYTES": 1024 * 1024,
    # Longest instance id and event name, in characters (at most the columns' 200).
    "MAX_INSTANCE_ID_LENGTH": 200,
    "MAX_EVENT_NAME_LENGTH": 200,
    # Deepest nesting of JSON parsed from a request body, a form or the command line.
    "MAX_JSON_DEPTH": 32,
    # -- telemetry (docs/telemetry.md) --
    # What to emit, a dict of booleans: {"traces": True} (OpenTelemetry spans
    # per run and per step, needs opentelemetry-api: the [otel] extra; the
    # project configures the SDK), {"metrics": True} (Prometheus counters,
    # histograms and gauges, needs prometheus_client: the [prometheus] extra),
    # {"logs": True} (one record of logger "durable_django" per transition and
    # failure, with extra fields). Optional keys: "steps" ("spans", the
    # default: a span per step; "events": an event per step on the run span,
    # cheaper), "registry" (dotted path of a
    # prometheus_client CollectorRegistry; default: prometheus_client.REGISTRY)
    # and "metrics_token" (a bearer token accepted by the /metrics view besides
    # the view_durableinstance permission). Empty: all off, nothing imported,
    # no per-step cost.
    "TELEMETRY": {},
    # -- Schedules (docs/schedules.md) --
    # Schedules declared in settings, synced to the DurableSchedule table on migrate and by
    # `durable_schedules sync`: {"name": {"program": "app.module.fn", "cron": "0 9 * * MON" or
    # "interval": seconds, "tz": "Europe/Paris", "args": [...], "kwargs": {...}, "overlap": "skip" |
    # "allow" | "cancel_previous", "catchup": "skip" | "latest" | "all", "max_catchup": 10}}.
    "SCHEDULES": {},
    # Seconds between two firings of due schedules (the Celery beat entry "durable-django-schedules"
    # and `durable_resume --loop`): the precision of a tick.
    "SCHEDULE_INTERVAL": 5,
    # Catch-up "skip": a tick fired at most this many seconds late still runs; an older one is skipped.
    "SCHEDULE_GRACE_SECONDS": 60,
    # Most schedules one firing starts (the rest wait for the next firing).
    "SCHEDULE_BATCH": 20000,
    # -- Progress from inside a process (docs/progress.md) --
    # Largest custom status (durable.set_status) or published value (durable.publish), in bytes of its
    # JSON text: it is saved with every checkpoint, so keep it a summary. Larger values are refused where
    # the program sets them.
    "MAX_STATUS_BYTES": 4096,
    # Most keys one instance may publish with durable.publish().
    "MAX_PUBLISHED_KEYS": 100,
    # get_value()/aget_value(): the longest pause between two reads of the row while waiting for a value
    # (seconds); the first pauses are shorter (backoff from 0.02 s).
    "VALUE_POLL_MAX_INTERVAL": 1.0,
    # -- Flow control (docs/flow-control.md) --
    # Limits, priority and queue per program: {"app.module.program": {"concurrency": 5, "key": "customer_id",
    # "per_key": 1, "rate": "10/m", "per_key_rate": "1/s", "priority": 0, "queue": "reports",
    # "hold": "running"}}. "key" is an argument name or the dotted path of a function of the start
    # arguments. These win over durable_django.limit() declarations in code.
    "LIMITS": {},
    # Queues start(..., queue=) may route a single instance to (besides the programs' own queues and QUEUE):
    # a queue no worker consumes would leave the instance pending forever, so other names are refused.
    "QUEUES": [],
    # Celery message priority of wake-ups, from the instances' priorities clamped to 0..9: False (none),
    # True (higher first: RabbitMQ queues with x-max-priority), or "inverted" (lower first: the Redis transport).
    "MESSAGE_PRIORITY": False,
}

_KEY_SALT = b"durable_django.state-signing"


def derive_key(secret: str | bytes) -> bytes:
    """A signing key derived from a project secret (never the secret itself)."""
    if isinstance(secret, str):
        secret = secret.encode()
    return hmac.new(secret, _KEY_SALT, hashlib.sha256).digest()


class DurableSettings:
    """Attribute access to ``settings.DURABLE`` merged over :data:`DEFAULTS`."""

    def __init__(self) -> None:
        self._cached: set[str] = set()

    def user_settings(self) -> dict:
        value = getattr(settings, "DURABLE", None) or {}
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid DURABLE setting: {name!r}")
        value = self.user_settings().get(name, DEFAULTS[name])
        setattr(self, name, value)
        self._cached.add(name)
        return value

    def reload(self) -> None:
        for name in self._cached:
            try:
                delattr(self, name)
            except AttributeError:
                pass
        self._cached.clear()
        self._keys = None

    # -- derived values ---------------------------------------------------
    _keys: tuple[bytes, tuple[bytes, ...]] | None = None

    def _signing_keys(self) -> tuple[bytes, tuple[bytes, ...]]:
        """(key, fallbacks), validated once per settings change: never None, never empty."""
        keys = self._keys
        if keys is None:
            key = self.SIGNING_KEY
            if key is None:
                key = derive_key(_secret(getattr(settings, "SECRET_KEY", None), "SECRET_KEY"))
            else:
                key = _secret(key, "DURABLE['SIGNING_KEY']")
            fallbacks = self.SIGNING_KEY_FALLBACKS
            if fallbacks is None:
                if self.SIGNING_KEY is not None:
                    olds: list[bytes] = []
                else:
                    olds = [derive_key(_secret(s, f"SECRET_KEY_FALLBACKS[{i}]"))
                            for i, s in enumerate(_entries(getattr(settings, "SECRET_KEY_FALLBACKS", None) or [],
                                                           "SECRET_KEY_FALLBACKS"))]
            else:
                olds = [_secret(k, f"DURABLE['SIGNING_KEY_FALLBACKS'][{i}]")
                        for i, k in enumerate(_entries(fallbacks, "DURABLE['SIGNING_KEY_FALLBACKS']"))]
            keys = self._keys = (key, tuple(olds))
        return keys

    @property
    def signing_key(self) -> bytes:
        """The key every blob is signed with (raises ImproperlyConfigured rather than ever being empty)."""
        return self._signing_keys()[0]

    @property
    def signing_key_fallbacks(self) -> tuple[bytes, ...]:
        """Older keys still accepted when verifying (key rotation)."""
        return self._signing_keys()[1]


def _entries(value: Any, name: str) -> list:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ImproperlyConfigured(f"{name} must be a list of keys, got {type(value).__name__}")
    return list(value)


def _secret(value: Any, name: str) -> bytes:
    """``value`` as key bytes; a missing or empty key is a configuration error, never "don't verify"."""
    if not isinstance(value, str | bytes):
        raise ImproperlyConfigured(
            f"{name} must be a non-empty str or bytes, got {value!r}: durable state is always signed and "
            "verified, and a missing key never turns verification off (docs/security.md)")
    if not value:
        raise ImproperlyConfigured(f"{name} is empty: a blob signed with an empty key proves nothing; "
                                   "set a secret key (docs/security.md)")
    return value.encode() if isinstance(value, str) else value


durable_settings = DurableSettings()


def beat_schedule(interval: float | None = None, schedules_interval: float | None = None) -> dict:
    """The Celery beat entries for the periodic sweep and the schedules; merge them into ``CELERY_BEAT_SCHEDULE``.

    Importable from a settings module (it touches neither models nor
    settings: omitted intervals are the defaults). ``schedules_interval`` is
    how often due schedules are fired, so the precision of their ticks.
    """
    if interval is None:
        interval = DEFAULTS["SWEEP_INTERVAL"]
    if schedules_interval is None:
        schedules_interval = DEFAULTS["SCHEDULE_INTERVAL"]
    return {"durable-django-sweep": {"task": "durable_django.sweep", "schedule": float(interval)},
            "durable-django-schedules": {"task": "durable_django.fire_schedules",
                                         "schedule": float(schedules_interval)}}


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting in ("DURABLE", "SECRET_KEY", "SECRET_KEY_FALLBACKS"):
        durable_settings.reload()


setting_changed.connect(_reload, dispatch_uid="durable_django.conf.reload")
