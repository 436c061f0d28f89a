"""Views a project wires to its own URLs: publish an event, list and answer human tasks.

All of them need a logged-in user, are CSRF-protected (``csrf_protect``, also
without the middleware) and check permission per instance: publishing needs
``durable_django.publish_durableevent`` unless the instance waits for that
event and the user is one it is assigned to (see
:mod:`durable_django.humantasks`). Bad input is a clear 4xx with a JSON body
``{"error": ...}``::

    400 malformed JSON, a payload the wait's form or schema rejects, a blank event name
    401 not logged in          403 not allowed            404 no such instance
    405 not POST               409 the instance already finished
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django.views.decorators.csrf import csrf_protect

from .exceptions import InstanceFinished, InvalidPayload, UnknownInstance
from .forms import PublishEventForm
from .humantasks import assignment
from .humantasks.models import HumanTask
from .humantasks.sync import answer


def _error(status: int, message: Any) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def publish_for_user(user, instance_id: str, event: str, payload: Any = None,
                     idempotency_key: str | None = None) -> tuple[int, dict]:
    """Publish ``event`` as ``user`` with every check; return ``(http_status, json_body)``.

    The building block of :class:`PublishEventView`, for projects that write
    their own view (or DRF endpoint) around it.
    """
    if not user.is_authenticated:
        return 401, {"error": "log in first"}
    try:
        ev = answer(user, instance_id, event, payload, idempotency_key=idempotency_key)
    except PermissionDenied as exc:
        return 403, {"error": str(exc) or "permission denied"}
    except ValidationError as exc:
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        return 400, {"error": "invalid payload", "detail": detail}
    except UnknownInstance as exc:
        return 404, {"error": str(exc)}
    except InstanceFinished as exc:
        return 409, {"error": str(exc)}
    except (InvalidPayload, ValueError) as exc:
        return 400, {"error": str(exc)}
    return 202, {"instance_id": instance_id, "event": event, "event_id": ev.pk}


@method_decorator(csrf_protect, name="dispatch")
class PublishEventView(View):
    """POST an event to the instance named in the URL (``instance_id`` kwarg).

    Body: JSON ``{"event": "approved", "payload": {...}, "idempotency_key": "..."}``
    or form fields ``event``, ``payload`` (JSON text), ``idempotency_key``.
    An ``event`` URL kwarg fixes the event name. Answers 202 ``{"event_id": ...}``.
    """

    http_method_names = ["post"]

    def post(self, request: HttpRequest, instance_id: str, event: str | None = None) -> JsonResponse:
        if not request.user.is_authenticated:
            return _error(401, "log in first")
        if request.content_type == "application/json":
            try:
                body = json.loads(request.body or b"null")
            except ValueError as exc:
                return _error(400, f"malformed JSON: {exc}")
            if not isinstance(body, dict):
                return _error(400, "the body must be a JSON object")
            data = {"event": event or body.get("event") or "", "idempotency_key": body.get("idempotency_key") or ""}
            payload = body.get("payload")
        else:
            form = PublishEventForm({**request.POST.dict(), **({"event": event} if event else {})})
            if not form.is_valid():
                return _error(400, form.errors.get_json_data())
            data, payload = form.cleaned_data, form.cleaned_data["payload"]
        name = (data.get("event") or "").strip()
        if not isinstance(name, str) or not name:
            return _error(400, "an event name is required")
        status, body = publish_for_user(request.user, instance_id, name, payload, data.get("idempotency_key") or None)
        return JsonResponse(body, status=status)


publish_event_view = PublishEventView.as_view()


def _task_form(task: HumanTask, data=None):
    cls = assignment.form_class({"form": task.form, "schema": task.schema})
    if cls is None:
        return None
    return cls(data=data)


@login_required
def task_list(request: HttpRequest) -> HttpResponse:
    """The waits this user may answer, each with its form."""
    tasks = list(HumanTask.objects.for_user(request.user).select_related("instance", "assignee_group",
                                                                          "assignee_user")
                 .defer("instance__state", "instance__arguments").order_by("created_at")[:200])
    rows = [{"task": t, "form": _task_form(t)} for t in tasks]
    return render(request, "durable_django/task_list.html", {"rows": rows})


@method_decorator([login_required, csrf_protect], name="dispatch")
class TaskAnswerView(View):
    """GET: the task's form. POST: validate it, publish the event, go back (``next``) or to the task list."""

    template_name = "durable_django/task_answer.html"

    def get_task(self, request: HttpRequest, instance_id: str) -> HumanTask:
        task = HumanTask.objects.for_user(request.user).filter(instance_id=instance_id).first()
        if task is None:
            raise PermissionDenied("no task of yours waits on this instance")
        return task

    def get(self, request: HttpRequest, instance_id: str) -> HttpResponse:
        task = self.get_task(request, instance_id)
        return render(request, self.template_name, {"task": task, "form": _task_form(task)})

    def post(self, request: HttpRequest, instance_id: str) -> HttpResponse:
        task = self.get_task(request, instance_id)
        form = _task_form(task, request.POST)
        if form is not None and not form.is_valid():
            return render(request, self.template_name, {"task": task, "form": form}, status=400)
        payload = assignment.to_json(form.cleaned_data) if form is not None else None
        try:
            answer(request.user, instance_id, task.event, payload)
        except PermissionDenied:
            raise
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            return render(request, self.template_name, {"task": task, "form": form}, status=400)
        except (InstanceFinished, UnknownInstance) as exc:
            messages.error(request, str(exc))
            return redirect("durable:tasks")
        messages.success(request, f"Answered: {task}")
        nxt = request.POST.get("next") or ""
        if nxt and url_has_allowed_host_and_scheme(nxt, {request.get_host()}, request.is_secure()):
            return redirect(nxt)
        return redirect(reverse("durable:tasks"))


task_answer = TaskAnswerView.as_view()
