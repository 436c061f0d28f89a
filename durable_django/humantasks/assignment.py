"""Who may answer a wait, and what its payload must look like.

Everything is read from the wait's metadata in the instance's signed state
(the truth), so a task row that is late or missing never lets the wrong person
answer. Metadata keys (all optional): ``user`` (username), ``group`` (group
name), ``permission`` (``"app_label.codename"``), ``exclude_user`` (a username
that may never answer, e.g. whoever submitted what is approved: not even a
superuser), ``form`` (dotted path of a Django form), ``schema`` (a JSON-schema
subset, see :func:`schema_form`), ``title``.

An instance paused on parallel branches (``durable.gather``) waits on several
waits at once (a ``"branches"`` wait lists each branch's, nested groups
included): each event wait is a :class:`Wait` with its branch path, so each
human task is found, checked and answered on its own (the single wait of an
instance without branches has the branch ``""``).

The checks run twice: when a user publishes (:func:`check_answer`, an
immediate 403/400) and when the wait consumes an event
(:func:`judge_answer`, in the worker), so an event published before the
wait existed is held to the same rules as an answer to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.module_loading import import_string

from durable import SavedState
from durable.state import leaf_waits

from ..exceptions import StateUnreadable, state_error
from ..judges import is_task_meta
from ..models import DurableInstance, Status
from ..signing import STATE, blob_context, unsign

ASSIGNMENT_KEYS = ("user", "group", "permission")
#: The row's ``wait_kind`` of an instance that may wait for a person: one event wait, or parallel branches.
EVENT_KINDS = ("event", "branches")


@dataclass
class Wait:
    """What an instance waits for now (only event waits with their metadata)."""

    instance_id: str
    event: str
    meta: dict = field(default_factory=dict)
    due: float | None = None
    version: int = 0
    #: Checkpoints taken so far: constant while the instance waits here, so it identifies this wait.
    steps: int = 0
    #: The path of the branch that waits (``"0.1"``, nested ``"0.0/1.1"``); ``""``: the instance itself.
    branch: str = ""

    @property
    def assigned(self) -> bool:
        return any(self.meta.get(k) for k in ASSIGNMENT_KEYS)

    @property
    def is_task(self) -> bool:
        return is_task_meta(self.meta)


def current_waits(instance_id: str) -> list[Wait]:
    """The event waits the instance is paused on (one, or one per paused branch), read from its verified state.

    Raises :class:`StateUnreadable` when the state fails its signature check or cannot be unpickled.
    """
    row = (DurableInstance.objects.filter(pk=instance_id, status=Status.PAUSED, wait_kind__in=EVENT_KINDS)
           .values_list("program", "state", "version").first())
    if row is None:
        return []
    return waits_of(instance_id, *row)


def current_wait(instance_id: str) -> Wait | None:
    """The first of :func:`current_waits` (the only one unless the instance waits in parallel branches)."""
    waits = current_waits(instance_id)
    return waits[0] if waits else None


def waits_of(instance_id: str, program: str, blob: bytes | memoryview | None, version: int) -> list[Wait]:
    """The event waits recorded in a paused instance's state blob (verified before it is unpickled), in the
    order of the branches.

    Raises :class:`StateUnreadable` when the blob fails its signature check or cannot be unpickled.
    """
    if blob is None:
        return []
    try:
        state: SavedState = unsign(blob, blob_context(instance_id, program, STATE))
    except Exception as exc:  # nobody can be checked against a wait that cannot be read: refuse, clearly
        raise StateUnreadable(instance_id, Status.PAUSED, state_error(exc)) from exc
    steps = int(state.get("steps") or 0)
    return [Wait(instance_id, w.get("event") or "", dict(w.get("meta") or {}), w.get("due"), version, steps,
                 str(w.get("branch") or "")) for w in event_waits(state.get("wait"))]


def wait_of(instance_id: str, program: str, blob: bytes | memoryview | None, version: int) -> Wait | None:
    """The first of :func:`waits_of` (kept for callers that know the instance has no branches)."""
    waits = waits_of(instance_id, program, blob, version)
    return waits[0] if waits else None


def event_waits(wait: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The event waits in a state's wait: itself, or every paused branch's (:func:`durable.state.leaf_waits`:
    nested groups flattened, each entry with the path of its innermost branch)."""
    return [w for w in leaf_waits(wait) if w.get("kind") == "event"]  # type: ignore[arg-type]


def find_wait(waits: list[Wait], event: str, branch: str | None = None, user=None) -> Wait | None:
    """The wait an answer to ``event`` is for: the branch's, when ``branch`` is given; else the first wait for
    ``event`` (a human task ``user`` may answer first, when several branches wait for the same event)."""
    matching = [w for w in waits if w.event == event and (branch is None or w.branch == branch)]
    if user is not None:
        mine = [w for w in matching if w.is_task and may_answer(user, w.meta)]
        matching = mine or matching
    return matching[0] if matching else None


def may_answer(user, meta: dict) -> bool:
    """True if ``user`` may answer a wait with this metadata (superusers always may).

    A wait without an assignee can be answered by anyone allowed to publish
    events (``durable_django.publish_durableevent``).
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if meta.get("exclude_user") and user.get_username() == meta["exclude_user"]:
        return False
    if user.is_superuser:
        return True
    if not any(meta.get(k) for k in ASSIGNMENT_KEYS):
        return user.has_perm("durable_django.publish_durableevent")
    if meta.get("user") and user.get_username() == meta["user"]:
        return True
    if meta.get("group") and user.groups.filter(name=meta["group"]).exists():
        return True
    return bool(meta.get("permission")) and user.has_perm(meta["permission"])


def form_class(meta: dict) -> type[forms.BaseForm] | None:
    """The form a wait's payload must pass: ``form`` (dotted path) or one built from ``schema``."""
    if meta.get("form"):
        cls = import_string(meta["form"])
        if not (isinstance(cls, type) and issubclass(cls, forms.BaseForm)):
            raise TypeError(f"{meta['form']!r} is not a Django form class")
        return cls
    if meta.get("schema"):
        return schema_form(meta["schema"])
    return None


def clean_payload(meta: dict, payload: Any) -> Any:
    """Validate ``payload`` against the wait's form or schema; return the JSON-compatible cleaned payload.

    Raises ``ValidationError`` (with the form's errors) when it does not fit.
    Without a form or schema the payload is returned as is.
    """
    cls = form_class(meta)
    if cls is None:
        return payload
    if not isinstance(payload, dict):
        raise ValidationError("the payload must be a JSON object")
    form = cls(data=payload)
    unexpected = sorted(set(payload) - set(form.fields))
    if unexpected:
        raise ValidationError(f"unexpected fields: {', '.join(unexpected)}")
    if not form.is_valid():
        raise ValidationError(form.errors.as_data())
    return to_json(form.cleaned_data)


def to_json(data: dict) -> dict:
    """Cleaned form data as the program will receive it (dates, decimals... as JSON strings)."""
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def check_answer(user, instance_id: str, event: str, payload: Any, branch: str | None = None) -> Any:
    """Enforce the wait's assignment and form for an event ``user`` publishes; return the payload to publish.

    The wait is the one for ``event`` (in ``branch`` when given, see
    :func:`find_wait`). If the instance is not paused on a wait for ``event``
    (the event will be kept in the inbox for later), only
    ``durable_django.publish_durableevent`` lets a user publish it. Raises
    ``PermissionDenied`` or ``ValidationError``.
    """
    return check_wait(user, find_wait(current_waits(instance_id), event, branch, user), event, payload)


def check_wait(user, wait: Wait | None, event: str, payload: Any) -> Any:
    """:func:`check_answer` for a wait already read with :func:`current_wait`."""
    if wait is None or wait.event != event or not wait.is_task:
        if not (user.is_authenticated and user.is_active and user.has_perm("durable_django.publish_durableevent")):
            raise PermissionDenied("you may not publish events to this instance")
        return payload
    if not may_answer(user, wait.meta):
        raise PermissionDenied("this task is assigned to someone else")
    return clean_payload(wait.meta, payload)


def judge_answer(meta: dict, publisher_id: Any, payload: Any) -> tuple[bool, Any]:
    """Does an event answer a human-task wait, checked when the wait consumes it?

    ``(True, cleaned payload)`` when its publisher (a user id, stored by
    :func:`durable_django.publish_event` from its ``actor``) exists, is active
    and may answer the wait now, and the payload passes the wait's form or
    schema; else ``(False, reason)``. An event published by code without a
    user answers no human task: code answers as a user with :func:`~.sync.answer`.
    """
    if publisher_id is None:
        return False, ("published without a user; a human task takes answers from the users it is assigned to "
                       "(the task pages, the publish view, or answer(user, ...))")
    user = get_user_model()._default_manager.filter(pk=publisher_id).first()
    if user is None:
        return False, f"its publisher (user id {publisher_id}) no longer exists"
    if not may_answer(user, meta):
        return False, f"{user.get_username()!r} may not answer this task ({describe_assignment(meta)})"
    try:
        return True, clean_payload(meta, payload)
    except ValidationError as exc:
        return False, f"the payload does not fit the task's form: {error_text(exc)}"
    except (ImportError, TypeError, ValueError) as exc:  # the wait names no usable form: nothing can answer it
        return False, f"the task's form cannot be used: {type(exc).__name__}: {exc}"


def describe_assignment(meta: dict) -> str:
    """Who may answer, in words (for rejection reasons)."""
    parts = [f"{k} {meta[k]!r}" for k in ASSIGNMENT_KEYS if meta.get(k)]
    text = " or ".join(parts) if parts else "users who may publish events"
    if meta.get("exclude_user"):
        text += f", never {meta['exclude_user']!r}"
    return text


def error_text(exc: ValidationError) -> str:
    """A ValidationError (from a form, with field names) as one line."""
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return " ".join(exc.messages)


def task_wait(user, instance_id: str, instance: DurableInstance | None = None, branch: str = "") -> Wait | None:
    """The human task ``user`` may answer on ``instance_id`` (in ``branch``), from the instance's signed state;
    else None. ``instance``: its row when already loaded (with ``state``), to save a query.

    What the task pages use for the event name, the assignment and the form:
    never the :class:`~.models.HumanTask` row's columns, which are unsigned
    copies a database write could change (and a form path is imported).
    """
    try:
        if instance is None:
            waits = current_waits(instance_id)
        elif instance.status == Status.PAUSED and instance.wait_kind in EVENT_KINDS:
            waits = waits_of(instance_id, instance.program, instance.state, instance.version)
        else:
            waits = []
    except Exception:  # tampered or unreadable state: no one can answer it here
        return None
    wait = next((w for w in waits if w.branch == branch), None)
    if wait is None or not wait.is_task or not may_answer(user, wait.meta):
        return None
    return wait


# -- schemas -------------------------------------------------------------------
def _schema_field(spec: dict, required: bool) -> forms.Field:
    kind = spec.get("type", "string")
    common: dict[str, Any] = {"required": required, "label": spec.get("title"),
                              "help_text": spec.get("description", "")}
    if "enum" in spec:
        return forms.ChoiceField(choices=[(v, v) for v in spec["enum"]], **common)
    if kind == "boolean":
        return forms.BooleanField(**{**common, "required": False})
    if kind == "integer":
        return forms.IntegerField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    if kind == "number":
        return forms.DecimalField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    if kind == "string":
        widget = forms.Textarea(attrs={"rows": 3}) if spec.get("format") == "textarea" else None
        return forms.CharField(max_length=spec.get("maxLength"), min_length=spec.get("minLength"), widget=widget,
                               **common)
    raise ValueError(f"unsupported schema type {kind!r}")


def schema_form(schema: dict) -> type[forms.Form]:
    """A Django form for a JSON-schema subset: an object whose ``properties`` are string (``maxLength``,
    ``minLength``, ``format: textarea``), integer/number (``minimum``, ``maximum``), boolean or ``enum``;
    ``required`` lists the required ones.
    """
    if schema.get("type", "object") != "object" or not isinstance(schema.get("properties"), dict):
        raise ValueError("a payload schema must be {'type': 'object', 'properties': {...}}")
    required = set(schema.get("required", ()))
    fields = {name: _schema_field(spec, name in required) for name, spec in schema["properties"].items()}
    return type("SchemaForm", (forms.Form,), fields)
