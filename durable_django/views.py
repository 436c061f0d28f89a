"""Views a project wires to its own URLs: publish an event, list and answer human tasks.

All of them need a logged-in user, are CSRF-protected (``csrf_protect``, also
without the middleware) and check permission per instance: publishing needs
``durable_django.publish_durableevent`` unless the instance waits for that
event and the user is one it is assigned to (see
:mod:`durable_django.humantasks`). An event published before its wait is
kept, and checked when a human-task wait consumes it (its publisher must be
an assignee, its payload must fit the form; otherwise it is rejected). The
task pages read the event, assignment and form from the instance's signed
state, never from the ``HumanTask`` row's columns. Bad input is a clear 4xx
with a JSON body ``{"error": ...}``::

    400 malformed JSON (also NaN, infinite numbers, nesting deeper than
        DURABLE['MAX_JSON_DEPTH']), a field of the wrong type, a payload the wait's
        form or schema rejects or that exceeds DURABLE['MAX_PAYLOAD_BYTES'], a blank,
        too long or unstorable (NUL character) event name or instance id
    401 not logged in          403 not allowed            404 no such instance
    405 not POST               409 the instance already finished
    413 a request body larger than DURABLE['MAX_PAYLOAD_BYTES'] plus 8 KiB

The body is checked (size, JSON, types) before anything else, the permission
check included. One answer per wait: the idempotency key is the server's (see
:mod:`durable_django.answers`); a client's ``idempotency_key`` is ignored.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, TooManyFieldsSent, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views import View
from django.views.decorators.csrf import csrf_protect

from . import limits
from .answers import publish_answer
from .exceptions import InstanceFinished, InvalidInput, InvalidPayload, StateUnreadable, UnknownInstance
from .forms import PublishEventForm, error_text

#: The task pages (and the assignment checks of the publish view) need the optional human-task app.
HUMAN_TASKS = apps.is_installed("durable_django.humantasks")
if HUMAN_TASKS:
    from .humantasks import assignment
    from .humantasks.models import HumanTask
    from .humantasks.sync import answer


def _error(status: int, message: Any) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _publish(user, instance_id: str, event: str, payload: Any, idempotency_key: str | None):
    """Publish as ``user``: with the human-task app, through its checks (:func:`answer`); without it no wait is
    assigned to anyone, and publishing needs ``durable_django.publish_durableevent``."""
    if HUMAN_TASKS:
        return answer(user, instance_id, event, payload, idempotency_key=idempotency_key)
    if not (user.is_active and user.has_perm("durable_django.publish_durableevent")):
        raise PermissionDenied("you may not publish events to this instance")
    return publish_answer(instance_id, event, payload, actor=user)


def publish_for_user(user, instance_id: str, event: str, payload: Any = None,
                     idempotency_key: str | None = None) -> tuple[int, dict]:
    """Publish ``event`` as ``user`` with every check; return ``(http_status, json_body)``.

    The building block of :class:`PublishEventView`, for projects that write
    their own view (or DRF endpoint) around it.
    """
    if not user.is_authenticated:
        return 401, {"error": "log in first"}
    try:
        limits.check_instance_id(instance_id)
        limits.check_event_name(event)
        limits.check_payload(payload)  # before the permission and form checks: bad input is a 400 for anyone
    except (InvalidInput, InvalidPayload) as exc:
        return 400, {"error": str(exc)}
    try:
        ev = _publish(user, instance_id, event, payload, idempotency_key)
    except PermissionDenied as exc:
        return 403, {"error": str(exc) or "permission denied"}
    except ValidationError as exc:
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        return 400, {"error": "invalid payload", "detail": detail}
    except UnknownInstance as exc:
        return 404, {"error": str(exc)}
    except InstanceFinished as exc:
        return 409, {"error": str(exc)}
    except StateUnreadable as exc:  # the wait (who may answer, the form) cannot be checked: refused
        return 409, {"error": str(exc), "status": exc.status}
    except (InvalidPayload, ValueError) as exc:
        return 400, {"error": str(exc)}
    return 202, {"instance_id": instance_id, "event": event, "event_id": ev.pk}


async def apublish_for_user(user, instance_id: str, event: str, payload: Any = None,
                            idempotency_key: str | None = None) -> tuple[int, dict]:
    """:func:`publish_for_user` for an async view; the same checks and answers.

    Read ``request.auser()`` first: ``request.user`` is lazy, and loading it
    is a sync query that async code may not run.
    """
    return await sync_to_async(publish_for_user, thread_sensitive=True)(user, instance_id, event, payload,
                                                                        idempotency_key)


@method_decorator(csrf_protect, name="dispatch")
class PublishEventView(View):
    """POST an event to the instance named in the URL (``instance_id`` kwarg).

    Body: JSON ``{"event": "approved", "payload": {...}}`` or form fields
    ``event`` and ``payload`` (JSON text). An ``event`` URL kwarg fixes the event
    name. Answers 202 ``{"event_id": ...}``.
    """

    http_method_names = ["post"]

    def post(self, request: HttpRequest, instance_id: str, event: str | None = None) -> JsonResponse:
        if not request.user.is_authenticated:
            return _error(401, "log in first")
        try:
            name, payload = self.read(request, event)
        except _Refused as exc:
            return _error(exc.status, exc.message)
        status, body = publish_for_user(request.user, instance_id, name, payload)
        return JsonResponse(body, status=status)

    def read(self, request: HttpRequest, event: str | None) -> tuple[str, Any]:
        """The event name and payload of the request, checked; :class:`_Refused` otherwise."""
        limit = limits.max_request_bytes()
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise _Refused(400, "invalid Content-Length") from None
        if declared > limit:
            raise _Refused(413, f"the request body is {declared} bytes; at most {limit} are read")
        try:
            if request.content_type == "application/json":
                raw = request.body
                if len(raw) > limit:
                    raise _Refused(413, f"the request body is over {limit} bytes")
                return self.read_json(raw, event)
            fields = request.POST.dict()
        except (RequestDataTooBig, TooManyFieldsSent) as exc:
            raise _Refused(413, str(exc)) from None
        form = PublishEventForm({**fields, **({"event": event} if event else {})})
        if not form.is_valid():
            raise _Refused(400, error_text(form.errors))
        return form.cleaned_data["event"], form.cleaned_data["payload"]

    @staticmethod
    def read_json(raw: bytes, event: str | None) -> tuple[str, Any]:
        try:
            body = limits.parse_json(raw or b"null", "JSON body")
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        if not isinstance(body, dict):
            raise _Refused(400, "the body must be a JSON object")
        name = event if event else body.get("event")
        if not isinstance(name, str):
            raise _Refused(400, "an event name is required" if name is None or name == ""
                           else f"'event' must be a string, got {type(name).__name__}")
        key = body.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise _Refused(400, f"'idempotency_key' must be a string, got {type(key).__name__}")
        name = name.strip()
        if not name:
            raise _Refused(400, "an event name is required")
        return name, body.get("payload")


class _Refused(Exception):
    """A request refused before anything else looked at it."""

    def __init__(self, status: int, message: Any) -> None:
        super().__init__(message)
        self.status, self.message = status, message


publish_event_view = PublishEventView.as_view()


def signed_task(user, task: HumanTask | None) -> HumanTask | None:
    """``task`` with its event, title, form and schema taken from the instance's signed state, if ``user`` may
    answer it there; None otherwise (a stale row, a row changed in the database, a task of someone else).

    The ``HumanTask`` row only finds the tasks (one indexed query); what a page shows, imports and answers
    comes from the signed state (:func:`assignment.task_wait`).
    """
    if task is None:
        return None
    loaded = task.instance if "instance" in task._state.fields_cache else None
    wait = assignment.task_wait(user, task.instance_id, loaded, task.branch)
    if wait is None or wait.event != task.event:
        return None
    task.event, task.title = wait.event, str(wait.meta.get("title") or "")
    task.form, task.schema = str(wait.meta.get("form") or ""), wait.meta.get("schema")
    task.wait = wait
    return task


def task_form(task: HumanTask, data=None):
    """The form of a task returned by :func:`signed_task` (None when the wait has no form or schema).

    Its HTML ids are the task's own (``auto_id``), so two tasks' forms on one page (parallel branches) never
    share an id; the field names stay the form's.
    """
    cls = assignment.form_class(task.wait.meta)
    if cls is None:
        return None
    return cls(data=data, auto_id=f"id_{task.key}_%s")


def tasks_of(user, instance_id: str) -> list[HumanTask]:
    """The open tasks ``user`` may answer on one instance (one per waiting branch), as :func:`signed_task`
    returns them, in the order of the branches."""
    rows = (HumanTask.objects.for_user(user).filter(instance_id=instance_id).select_related("instance")
            .order_by("branch"))
    return [t for t in (signed_task(user, r) for r in rows) if t is not None]


def answer_url(task: HumanTask) -> str:
    """The answer page of a task: the instance's, with ``?branch=`` for a branch's wait."""
    url = reverse("durable:task-answer", args=[task.instance_id])
    return f"{url}?{urlencode({'branch': task.branch})}" if task.branch else url


@login_required
def task_list(request: HttpRequest) -> HttpResponse:
    """The waits this user may answer, each with its form."""
    tasks = HumanTask.objects.for_user(request.user).select_related("instance", "assignee_group", "assignee_user")
    signed = (signed_task(request.user, t) for t in tasks.defer("instance__arguments").order_by("created_at")[:200])
    rows = [{"task": t, "form": task_form(t), "url": answer_url(t)} for t in signed if t is not None]
    return render(request, "durable_django/task_list.html", {"rows": rows})


@method_decorator([login_required, csrf_protect], name="dispatch")
class TaskAnswerView(View):
    """GET: the task's form. POST: validate it, publish the event, go back (``next``) or to the task list.

    ``?branch=<path>`` picks the task of one parallel branch (none: the instance's own wait). A POST whose
    ``event`` field names another event than the task's now (the page was stale: the branch went on) is
    refused with a message instead of answering the new wait with the old page's data.
    """

    template_name = "durable_django/task_answer.html"

    def get_task(self, request: HttpRequest, instance_id: str) -> HumanTask:
        branch = request.GET.get("branch", "")
        try:
            limits.check_instance_id(instance_id)
            if limits.bad_character(branch) or len(branch) > 200:
                raise InvalidInput("invalid branch")
        except InvalidInput as exc:
            raise BadRequest(str(exc)) from None
        task = signed_task(request.user, HumanTask.objects.for_user(request.user)
                           .filter(instance_id=instance_id, branch=branch).first())
        if task is None:
            raise PermissionDenied("no task of yours waits on this instance")
        return task

    def context(self, task: HumanTask, form) -> dict:
        return {"task": task, "form": form, "url": answer_url(task)}

    def get(self, request: HttpRequest, instance_id: str) -> HttpResponse:
        task = self.get_task(request, instance_id)
        return render(request, self.template_name, self.context(task, task_form(task)))

    def post(self, request: HttpRequest, instance_id: str) -> HttpResponse:
        task = self.get_task(request, instance_id)
        posted_event = request.POST.get("event")
        if posted_event is not None and posted_event != task.event:
            messages.error(request, "This task changed since the page was loaded; here it is now.")
            return render(request, self.template_name, self.context(task, task_form(task)), status=409)
        form = task_form(task, request.POST)
        if form is not None and not form.is_valid():
            return render(request, self.template_name, self.context(task, form), status=400)
        payload = assignment.to_json(form.cleaned_data) if form is not None else None
        try:
            answer(request.user, instance_id, task.event, payload, branch=task.branch or None)
        except PermissionDenied:
            raise
        except ValidationError as exc:
            messages.error(request, error_text(exc, form))
            return render(request, self.template_name, self.context(task, form), status=400)
        except (InvalidPayload, InvalidInput) as exc:
            messages.error(request, str(exc))
            return render(request, self.template_name, self.context(task, form), status=400)
        except (InstanceFinished, UnknownInstance, StateUnreadable) as exc:
            messages.error(request, str(exc))
            return redirect("durable:tasks")
        messages.success(request, f"Answered: {task}")
        nxt = request.POST.get("next") or ""
        if nxt and url_has_allowed_host_and_scheme(nxt, {request.get_host()}, request.is_secure()):
            return redirect(nxt)
        return redirect(reverse("durable:tasks"))


task_answer = TaskAnswerView.as_view()
