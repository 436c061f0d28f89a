"""What may enter the app: instance ids, event names, keys, payloads, start arguments, request bodies.

Every entry point (the Python API, the publish view, the admin, the commands,
bindings) checks its input here before it touches the database, so bad input
is one clear error (:class:`~durable_django.exceptions.InvalidInput`, a
``ValueError``, or :class:`~durable_django.exceptions.InvalidPayload`) with
nothing stored, and gets the same answer on every database: PostgreSQL
refuses NUL characters, unpaired surrogates and non-finite numbers with a
``DataError`` that would otherwise surface as a 500, while SQLite stores them.

The limits are the ``MAX_*`` settings of the ``DURABLE`` dict. The checks on
the publish path are cheap on purpose: a type check, ``len`` and a substring
search of text the path produces anyway (the payload is serialized once, here,
and that text is what is written).
"""

from __future__ import annotations

import inspect
import json
import math
import re
from datetime import datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from .conf import durable_settings
from .exceptions import InvalidInput, InvalidPayload

#: Column lengths of the model: the largest values the settings may allow.
INSTANCE_ID_COLUMN = 200
EVENT_NAME_COLUMN = 200
IDEMPOTENCY_KEY_COLUMN = 255
PROGRAM_COLUMN = 255
OBJECT_ID_COLUMN = 64
#: Deepest nesting (lists, tuples, dicts) of a payload given from Python, the same on every Python: SQLite's
#: JSON functions refuse more than 1,000 levels, and Python's encoder stops at the recursion limit minus the
#: caller's stack on 3.11 (about 1,000) but reaches ~1,500 on 3.12 and ~10,000 on 3.13.
STORED_JSON_DEPTH = 500

_encoder = DjangoJSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
# An escaped NUL is "\u0000" preceded by an even number of backslashes (an odd number escapes the backslash).
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def bad_character(text: str) -> str | None:
    """What PostgreSQL cannot store in ``text`` ("a NUL character", "an unpaired surrogate"), or None."""
    if "\x00" in text:
        return "a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "an unpaired surrogate (not valid Unicode)"
    return None


def check_text(value: Any, what: str, max_length: int, *, required: bool = True) -> str:
    """``value`` if it is a storable string of at most ``max_length`` characters, else :class:`InvalidInput`."""
    if not isinstance(value, str) or (required and not value) or len(value) > max_length:
        got = (f"{len(value)} characters" if isinstance(value, str) and value else
               repr(value) if isinstance(value, str) or value is None else f"a {type(value).__name__}")
        raise InvalidInput(f"{what} must be a {'non-empty ' if required else ''}string of at most {max_length} "
                           f"characters, got {got}")
    bad = bad_character(value)
    if bad is not None:
        raise InvalidInput(f"{what} contains {bad}")
    return value


def check_instance_id(value: Any) -> str:
    """An id to look up or publish to (an existing instance may have an id up to the column's length)."""
    return check_text(value, "instance_id", INSTANCE_ID_COLUMN)


def check_new_instance_id(value: Any) -> str:
    """The id of an instance ``start`` creates: at most ``MAX_INSTANCE_ID_LENGTH`` characters."""
    return check_text(value, "instance_id", durable_settings.MAX_INSTANCE_ID_LENGTH)


def check_event_name(value: Any) -> str:
    return check_text(value, "event name", durable_settings.MAX_EVENT_NAME_LENGTH)


def check_idempotency_key(value: Any) -> str | None:
    return None if value is None else check_text(value, "idempotency_key", IDEMPOTENCY_KEY_COLUMN)


def payload_json(payload: Any) -> str:
    """The payload as the JSON text that is stored, or :class:`InvalidPayload` (nothing stored).

    Refused: what JSON cannot express (objects of other types, NaN and the
    infinities, nesting deeper than Python can serialize), what PostgreSQL
    cannot store (NUL characters, unpaired surrogates) and text longer than
    ``MAX_PAYLOAD_BYTES`` bytes of UTF-8.
    """
    try:
        text = _encoder.encode(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidPayload(f"event payload must be JSON-serializable, with finite numbers: {reason}") from None
    limit = durable_settings.MAX_PAYLOAD_BYTES
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidPayload("event payload contains an unpaired surrogate (not valid Unicode)") from None
    if size > limit:
        raise InvalidPayload(f"event payload is {size} bytes of JSON; at most {limit} are allowed "
                             "(DURABLE['MAX_PAYLOAD_BYTES'])")
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise InvalidPayload("event payload contains a NUL character, which PostgreSQL cannot store")
    if len(text) > 2 * STORED_JSON_DEPTH and _deeper_than(payload, STORED_JSON_DEPTH):
        raise InvalidPayload("event payload must be JSON-serializable, with finite numbers: it is nested too "
                             f"deeply (more than {STORED_JSON_DEPTH} levels)")
    return text


def _deeper_than(value: Any, limit: int) -> bool:
    """Without recursion: the payload's own depth is what is in question. Only long texts get here."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_payload(payload: Any) -> None:
    """Raise :class:`InvalidPayload` unless ``payload`` may be stored as an event payload."""
    payload_json(payload)


def check_arguments(blob: bytes, program: str) -> None:
    """Refuse signed start arguments larger than ``MAX_ARGUMENT_BYTES``."""
    limit = durable_settings.MAX_ARGUMENT_BYTES
    if len(blob) > limit:
        raise InvalidPayload(f"the arguments of {program} are {len(blob)} bytes pickled; at most {limit} are "
                             "allowed (DURABLE['MAX_ARGUMENT_BYTES']); pass a reference (a primary key, a path) "
                             "instead of the data")


def _signature(fn: Any) -> inspect.Signature:
    sig = _signatures.get(fn)
    if sig is None:
        sig = _signatures[fn] = inspect.signature(fn)
    return sig


_signatures: dict[Any, inspect.Signature] = {}


def bind_arguments(fn: Any, program: str, args: tuple, kwargs: dict) -> None:
    """``TypeError`` naming the program unless ``fn(*args, **kwargs)`` would bind, as Python binds a call.

    Checked at ``start`` so that an instance that could never run is not
    stored (it would fail at its first run, or, before this check, wait
    forever).
    """
    try:
        _signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        given = f"{len(args)} positional and {len(kwargs)} keyword argument(s)"
        raise TypeError(f"cannot start {program}{_signature(fn)} with {given}: {exc}") from None


# -- JSON from requests, forms and the command line ------------------------------
def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counting no further than ``limit + 1``."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        todo.extend((child, level + 1) for child in item if isinstance(child, dict | list))
    return deepest


def parse_json(text: str | bytes, what: str = "JSON") -> Any:
    """Parse untrusted JSON text: ``ValueError`` for malformed text, NaN or infinite numbers (also
    ``1e999``), and nesting deeper than ``MAX_JSON_DEPTH``."""
    limit = durable_settings.MAX_JSON_DEPTH
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"{what} is nested more than {limit} levels deep") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"malformed {what}: {exc}") from None
    # Cheap bound first: a document with at most `limit` brackets cannot be deeper than that.
    if isinstance(value, dict | list):
        raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
        if raw.count("[") + raw.count("{") > limit and depth(value, limit) > limit:
            raise ValueError(f"{what} is nested more than {limit} levels deep (DURABLE['MAX_JSON_DEPTH'])")
    return value


def max_request_bytes() -> int:
    """The largest publish request body read: a payload at the limit, plus room for the name and key."""
    return durable_settings.MAX_PAYLOAD_BYTES + 8192


#: A deadline as start() takes it: a timedelta or seconds from now, or an aware datetime.
Deadline = timedelta | float | int | datetime
#: The latest deadline a column can hold with room to spare (the core's due times stop at the year 9999).
_LATEST = datetime(9000, 1, 1).timestamp()


def check_deadline(value: Any, now: datetime, what: str = "deadline") -> datetime | None:
    """``value`` (a ``timedelta``, seconds, or an aware ``datetime``; None: no deadline) as an aware datetime.

    ``TypeError`` for another type (a bool, a string, a ``date``...); :class:`InvalidInput` for a deadline
    that has already passed, a length that is not positive or not finite, or a naive datetime (whose
    time zone would be a guess). ``now``: the database's time (``durable_django.clock.now``).
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInput(f"the {what} {value!r} is a naive datetime: give an aware one (e.g. "
                               "timezone.now() + timedelta(hours=1)), a timedelta or a number of seconds")
        at = value
    elif isinstance(value, timedelta) or (isinstance(value, int | float) and not isinstance(value, bool)):
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
        if not math.isfinite(seconds) or seconds <= 0:
            raise InvalidInput(f"the {what} must be a positive, finite length of time, got {value!r}")
        if now.timestamp() + seconds >= _LATEST:
            raise InvalidInput(f"the {what} {value!r} is too far in the future")
        at = now + timedelta(seconds=seconds)
    else:
        raise TypeError(f"the {what} must be a timedelta, a number of seconds or an aware datetime, got "
                        f"{type(value).__name__} {value!r}"[:300])
    if now.tzinfo is None and at.tzinfo is not None:  # USE_TZ = False: the columns hold naive local times
        at = timezone.make_naive(at)
    if at <= now:
        raise InvalidInput(f"the {what} {at.isoformat()} has already passed (it is {now.isoformat()})")
    if at.timestamp() >= _LATEST:
        raise InvalidInput(f"the {what} {at.isoformat()} is too far in the future")
    return at
