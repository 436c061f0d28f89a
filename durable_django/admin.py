"""Admin for durable instances: a fast changelist, a readable detail page, permission-checked actions.

Why it looks the way it does:

* The changelist never reads ``state`` or ``arguments`` (``only()``), never
  unpickles, and renders the linked object from the ContentType cache, so it
  costs the same few queries for 10 or 100,000 instances; it skips the extra
  unfiltered ``COUNT(*)``.
* The detail page decodes the signed state (HMAC checked first) into frames
  and locals shown as truncated ``repr`` text: nothing from the state is ever
  rendered as HTML or executed.
* Every action has its own permission: ``publish_durableevent``,
  ``resume_durableinstance`` (resume now, retry), ``cancel_durableinstance``,
  ``edit_locals_durableinstance``, ``fork_durableinstance`` (see
  :mod:`durable_django.forkadmin`). Publishing also obeys the wait's
  assignment and form (see :mod:`durable_django.humantasks`).
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote as urlquote

from django.apps import apps as django_apps
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import BadRequest, PermissionDenied, ValidationError
from django.db.models import Q
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join

from durable import StateTamperedError
from durable.progress import describe

from . import api, operations
from .adminfilters import FlowFilter, LinkedTypeFilter, ProgramFilter, WaitFilter
from .answers import publish_answer
from .branches import awaited_event, live_branches
from .childadmin import ParentFilter, family_context
from .exceptions import DurableDjangoError, InstanceFinished, InvalidInput, UnknownInstance
from .forkadmin import ForkAdminMixin
from .forms import EditLocalForm, PublishEventForm
from .limits import bad_character, check_instance_id
from .models import FINISHED, DurableEvent, DurableHistory, DurableInstance, Status
from .signing import STATE, blob_context, unsign
from .waits import retry_status

#: Human tasks (assignment and forms of waits) are enforced when their app is installed.
HUMAN_TASKS = django_apps.is_installed("durable_django.humantasks")
if HUMAN_TASKS:
    from .humantasks.models import HumanTask
    from .humantasks.sync import answer

LIST_FIELDS = ("instance_id", "program", "status", "wait_kind", "waiting_for", "wake_at", "updated_at", "attempts",
               "created_at", "content_type_id", "object_id", "cancel_requested_at", "progress",
               "flow_waiting")
#: "app_label.model:pk" in the search box finds the instances linked to that object.
_OBJECT_RE = re.compile(r"^(?P<app>\w+)\.(?P<model>\w+):(?P<pk>.+)$")
#: The due time of one wait in ``waiting_for`` (durable.state.describe_waits).
_UNTIL = re.compile(r" until \S+")
HISTORY_LIMIT = 300
EVENTS_LIMIT = 300


class SafeInputAdmin(admin.ModelAdmin):
    """Refuses what the database cannot compare (NUL characters): a 400, not a ``DataError`` and a 500.

    PostgreSQL rejects such text in any query, so a filter, a search or an
    object id holding one is answered here, the same way on every database.
    """

    def changelist_view(self, request, extra_context=None):
        for key, values in request.GET.lists():
            for text in (key, *values):
                bad = bad_character(text)
                if bad is not None:
                    return HttpResponseBadRequest(f"The filter or search {key!r} contains {bad}; nothing was "
                                                  "searched.", content_type="text/plain; charset=utf-8")
        return super().changelist_view(request, extra_context)

    def get_object(self, request, object_id, from_field=None):
        if bad_character(str(object_id)) is not None:
            return None  # no object can have that id: Django's "does not exist" answer
        return super().get_object(request, object_id, from_field)


def _linked_label(inst: DurableInstance) -> str:
    if not inst.content_type_id:
        return ""
    ct = ContentType.objects.get_for_id(inst.content_type_id)
    return f"{ct.app_label}.{ct.model}:{inst.object_id}"


def _short_time(at) -> str:
    """A time in a narrow column: the time of day if it is today, else the date and time, in local time."""
    local = timezone.localtime(at)
    if local.date() == timezone.localdate():
        return local.strftime("%H:%M:%S")
    return f"{date_format(local, 'SHORT_DATE_FORMAT')} {local:%H:%M}"


def _progress_line(value: Any) -> str:
    """What the program reported last (durable.set_status), short: the stage and percentage of the usual dict;
    the whole status in the tooltip."""
    if value is None:
        return ""
    short = value
    if isinstance(value, dict) and ("stage" in value or "percent" in value):
        short = {k: v for k, v in value.items() if k in ("stage", "percent")}
    return format_html('<small class="durable-progress" title="{}">{}</small>', describe(value, 1000),
                       describe(short, 30))


@admin.register(DurableInstance)
class DurableInstanceAdmin(ForkAdminMixin, SafeInputAdmin):
    # Five short columns, so that the list fits a 1280 px screen beside the admin's sidebar and the filters: the
    # wake time is in "waits for", failed attempts and the reported progress in the status, the linked object
    # under the program.
    list_display = ("instance_id", "program_name", "status_badge", "waits_for", "updated")
    list_filter = ("status", ProgramFilter, WaitFilter, FlowFilter, LinkedTypeFilter, ParentFilter)
    # Case-sensitive lookups, so that the primary key's and object_id's indexes serve them (UPPER() would scan).
    search_fields = ("instance_id__startswith", "object_id__exact")
    search_help_text = "Instance id (prefix), linked object id, or app_label.model:pk of a linked object."
    show_full_result_count = False
    # A count per filter choice would scan every row. (Django < 5.0 has no facets: check E030 says it is too old.)
    show_facets = getattr(admin, "ShowFacets", SimpleNamespace(NEVER=None)).NEVER
    list_per_page = 100
    ordering = ("-created_at",)
    actions = ["resume_selected", "retry_selected", "cancel_selected"]
    change_form_template = "admin/durable_django/durableinstance/detail.html"

    # -- permissions ------------------------------------------------------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # instances are started by code (durable_django.start)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # changes go through the actions below, never through a model form

    def has_resume_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("durable_django.resume_durableinstance")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("durable_django.cancel_durableinstance")

    def has_publish_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("durable_django.publish_durableevent")

    def has_edit_locals_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("durable_django.edit_locals_durableinstance")

    # -- changelist ---------------------------------------------------------------
    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).only(*LIST_FIELDS)

    def get_search_results(self, request, queryset, search_term):
        match = _OBJECT_RE.match(search_term.strip())
        if match:
            ct = ContentType.objects.filter(app_label=match["app"], model=match["model"].lower()).first()
            if ct is None:
                return queryset.none(), False
            return queryset.filter(Q(content_type=ct, object_id=match["pk"])), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="program / linked object", ordering="program")
    def program_name(self, obj: DurableInstance) -> str:
        name = format_html('<span title="{}">{}</span>', obj.program, obj.program.rsplit(".", 1)[-1])
        linked = _linked_label(obj)
        return format_html("{}<br><small>{}</small>", name, linked) if linked else name

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: DurableInstance) -> str:
        colours: dict[str, str] = {
            Status.COMPLETED: "#2a7", Status.FAILED: "#c33", Status.SUSPENDED: "#c70", Status.CANCELLED: "#888",
            Status.PAUSED: "#37a", Status.RUNNING: "#a5c", Status.PENDING: "#999"}
        badge = format_html('<b style="color:{}">{}</b>', colours.get(obj.status, "#000"), obj.get_status_display())
        if obj.cancel_requested_at is not None and obj.status not in FINISHED:
            badge = format_html('{} <small title="cancel requested at {}: its cleanup runs">(cancelling)</small>',
                                badge, obj.cancel_requested_at.isoformat())
        if obj.attempts:
            badge = format_html('{} <small title="failed attempts">({} attempt{})</small>', badge, obj.attempts,
                                "" if obj.attempts == 1 else "s")
        progress = _progress_line(obj.progress)
        return format_html("{}<br>{}", badge, progress) if progress else badge

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: DurableInstance) -> str:
        return format_html('<span title="{}">{}</span>', obj.updated_at.isoformat(), _short_time(obj.updated_at))

    @admin.display(description="waits for", ordering="wake_at")
    def waits_for(self, obj: DurableInstance) -> str:
        if obj.flow_waiting:  # flow control: over a concurrency or rate limit (docs/flow-control.md)
            limit = obj.flow_waiting.removeprefix("rate:")
            what = "rate limit" if obj.flow_waiting.startswith("rate:") else "a slot of"
            return format_html('<span title="{}">{} {}</span>', obj.flow_waiting, what, limit.rsplit(".", 1)[-1])
        if obj.status != Status.PAUSED:
            return ""
        when = f" until {_short_time(obj.wake_at)}" if obj.wake_at else ""
        if obj.wait_kind == "event":
            return f"event {obj.waiting_for}{when}"
        if obj.wait_kind == "branches":  # every paused branch's wait (durable_django.branches), one per line
            # each wait's own due time is long ISO text: the earliest, short, once
            lines = [_UNTIL.sub("", w) for w in obj.waiting_for.split("; ")] + ([when.strip()] if when else [])
            return format_html_join(format_html("<br>"), "{}", ((line,) for line in lines))
        if obj.wait_kind in ("child", "children"):
            return obj.waiting_for
        return f"timer{when}" if obj.wait_kind else ""

    # -- bulk actions -------------------------------------------------------------
    def _each(self, request, queryset, func, verb: str) -> None:
        done, refused = 0, []
        for iid in queryset.values_list("pk", flat=True):
            try:
                func(iid)
                done += 1
            except DurableDjangoError as exc:
                refused.append(str(exc))
        if done:
            self.message_user(request, f"{verb} {done} instance(s).", messages.SUCCESS)
        for text in refused[:10]:
            self.message_user(request, text, messages.WARNING)

    @admin.action(description="Resume selected instances now", permissions=["resume"])
    def resume_selected(self, request, queryset):
        self._each(request, queryset, lambda iid: api.resume(iid, actor=request.user.get_username()), "Resumed")

    @admin.action(description="Retry selected failed instances (from their last checkpoint)", permissions=["resume"])
    def retry_selected(self, request, queryset):
        self._each(request, queryset, lambda iid: operations.retry(iid, actor=request.user.get_username()),
                   "Retried")

    @admin.action(description="Cancel selected instances (their cleanup runs; again: at once)", permissions=["cancel"])
    def cancel_selected(self, request, queryset):
        self._each(request, queryset,
                   lambda iid: api.cancel(iid, f"cancelled by {request.user.get_username()} in the admin",
                                          actor=request.user.get_username()), "Cancelled (or requested the cancel of)")

    # -- detail page and per-instance actions -----------------------------------
    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/publish/", wrap(self.publish_view), name="{}_{}_publish".format(*info)),
            path("<path:object_id>/do/<str:action>/", wrap(self.operation_view), name="{}_{}_operation".format(*info)),
            path("<path:object_id>/locals/", wrap(self.edit_local_view), name="{}_{}_locals".format(*info)),
            *self.fork_urls(),
            *super().get_urls(),
        ]

    def _url(self, name: str, inst_id: str, **kwargs) -> str:
        return reverse(f"admin:durable_django_durableinstance_{name}", args=(quote(inst_id), *kwargs.values()),
                       current_app=self.admin_site.name)

    def _get(self, request, object_id: str) -> DurableInstance:
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            instance_id = check_instance_id(unquote(object_id))
        except InvalidInput as exc:
            raise BadRequest(str(exc)) from None
        return get_object_or_404(DurableInstance.objects.defer("arguments"), pk=instance_id)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        inst = self._get(request, object_id)
        return TemplateResponse(request, self.change_form_template, self.detail_context(request, inst))

    def detail_context(self, request, inst: DurableInstance, publish_form=None) -> dict:
        frames, stack_error, retrying, failed_at = [], "", None, ""
        if inst.state is not None:
            try:
                state = unsign(inst.state, blob_context(inst.instance_id, inst.program, STATE))
                frames = operations.frames(state)
                retrying = retry_status(state)
                failed_at = str(state.get("failed_at") or "") if inst.status == Status.FAILED else ""
            except StateTamperedError as exc:
                stack_error = f"The state failed its signature check and was not decoded: {exc}"
            except Exception as exc:  # code gone or changed: frames cannot be unpickled
                stack_error = f"Cannot decode the state: {type(exc).__name__}: {exc}"
        history = list(inst.history.order_by("-id")[:HISTORY_LIMIT])
        events = list(inst.events.order_by("-id")[:EVENTS_LIMIT])
        tasks = (list(HumanTask.objects.filter(instance=inst).select_related("assignee_user", "assignee_group")
                      .order_by("branch")) if HUMAN_TASKS else [])
        editable = inst.status in operations.EDITABLE and self.has_edit_locals_permission(request)
        iid = inst.instance_id
        return {
            **self.admin_site.each_context(request), "opts": self.opts, "title": f"Durable instance {iid}",
            "instance": inst, "original": inst, "frames": frames, "stack_error": stack_error, "history": history,
            "retrying": retrying, "failed_at": failed_at,
            "failure_chain": operations.failure_chain(inst.error) if inst.error else [],
            "error_shown": operations.error_shown(inst.error),
            "events": events, "tasks": tasks, "linked": _linked_label(inst), "finished": inst.status in FINISHED,
            "branches": live_branches(inst),
            "ws_path": f"/ws/durable/instances/{urlquote(iid, safe='')}/",
            "can": {"publish": self.has_publish_permission(request) and inst.status not in FINISHED,
                    "resume": self.has_resume_permission(request) and inst.status not in FINISHED,
                    "retry": self.has_resume_permission(request) and inst.status == Status.FAILED,
                    "cancel": self.has_cancel_permission(request) and inst.status not in FINISHED,
                    "force_cancel": (self.has_cancel_permission(request) and inst.status not in FINISHED
                                     and inst.cancel_requested_at is not None),
                    "edit_locals": editable},
            "publish_url": self._url("publish", iid), "locals_url": self._url("locals", iid),
            "operation_urls": {a: self._url("operation", iid, action=a)
                               for a in ("resume", "retry", "cancel", "force_cancel")},
            "publish_form": publish_form or PublishEventForm(initial={"event": awaited_event(inst)}),
            "edit_form_class": EditLocalForm, **self.fork_context(request, inst), **family_context(inst),
        }

    def _back(self, inst_id: str) -> HttpResponseRedirect:
        return HttpResponseRedirect(self._url("change", inst_id))

    def publish_view(self, request, object_id: str) -> HttpResponse:
        inst = self._get(request, object_id)
        if not self.has_publish_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return self._back(inst.instance_id)
        form = PublishEventForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                if HUMAN_TASKS:
                    answer(request.user, inst.instance_id, data["event"], data["payload"])
                else:  # one answer per wait, as for every event a person publishes (durable_django.answers)
                    publish_answer(inst.instance_id, data["event"], data["payload"], actor=request.user)
            except PermissionDenied as exc:
                form.add_error(None, str(exc) or "permission denied")
            except ValidationError as exc:
                form.add_error("payload", exc.messages if not hasattr(exc, "error_dict") else
                               [f"{k}: {'; '.join(v)}" for k, v in exc.message_dict.items()])
            except (DurableDjangoError, ValueError) as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, f"Event {data['event']!r} published.", messages.SUCCESS)
                return self._back(inst.instance_id)
        context = self.detail_context(request, inst, publish_form=form)
        return TemplateResponse(request, self.change_form_template, context, status=400)

    def operation_view(self, request, object_id: str, action: str) -> HttpResponse:
        inst = self._get(request, object_id)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        actor = request.user.get_username()
        checks = {"resume": self.has_resume_permission, "retry": self.has_resume_permission,
                  "cancel": self.has_cancel_permission, "force_cancel": self.has_cancel_permission}
        if action not in checks:
            return HttpResponse(status=404)
        if not checks[action](request):
            raise PermissionDenied
        try:
            if action == "resume":
                api.resume(inst.instance_id, actor=actor)
            elif action == "retry":
                operations.retry(inst.instance_id, actor=actor)
            else:
                done = api.cancel(inst.instance_id, request.POST.get("reason") or f"cancelled by {actor} in the admin",
                                  actor=actor, force=action == "force_cancel")
        except (InstanceFinished, UnknownInstance) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            if action == "cancel" and done.status != Status.CANCELLED:
                text = "Cancel requested: the program cleans up, then ends cancelled (force cancel ends it now)."
            else:
                text = f"{action.replace('_', ' ').capitalize()}: done."
            self.message_user(request, text, messages.SUCCESS)
        return self._back(inst.instance_id)

    def edit_local_view(self, request, object_id: str) -> HttpResponse:
        inst = self._get(request, object_id)
        if not self.has_edit_locals_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        form = EditLocalForm(request.POST)
        if not form.is_valid():
            for field, errs in form.errors.items():
                self.message_user(request, f"{field}: {'; '.join(map(str, errs))}", messages.ERROR)
            return self._back(inst.instance_id)
        data = form.cleaned_data
        expected = int(data["expected"]) if (data.get("expected") or "").isdigit() else None
        try:
            operations.edit_local(inst.instance_id, data["frame"], data["name"], data["value"],
                                  actor=request.user.get_username(), expected_version=expected)
        except (ValueError, operations.ConcurrentChange, DurableDjangoError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, f"Local {data['name']!r} updated.", messages.SUCCESS)
        return self._back(inst.instance_id)


class _ReadOnly(SafeInputAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DurableEvent)
class DurableEventAdmin(_ReadOnly):
    # Narrow enough for 1280 px: short times; the idempotency key and the payload are on the event's page.
    list_display = ("instance_id", "name", "published", "consumed")
    list_filter = ("name",)
    search_fields = ("=instance__instance_id", "name", "=idempotency_key")
    show_full_result_count = False

    @admin.display(description="published", ordering="created_at")
    def published(self, obj: DurableEvent) -> str:
        return _short_time(obj.created_at)

    @admin.display(description="consumed", ordering="consumed_at")
    def consumed(self, obj: DurableEvent) -> str:
        if obj.consumed_at is None:
            return "-"
        return f"rejected {_short_time(obj.consumed_at)}" if obj.rejected else _short_time(obj.consumed_at)


@admin.register(DurableHistory)
class DurableHistoryAdmin(_ReadOnly):
    list_display = ("instance_id", "kind", "status", "short_actor", "when")
    list_filter = ("kind",)
    search_fields = ("=instance__instance_id", "actor")
    show_full_result_count = False

    @admin.display(description="actor", ordering="actor")
    def short_actor(self, obj: DurableHistory) -> str:
        """A worker id is long (``celery@host:host:pid:...``): its start, the whole in the tooltip."""
        shown = obj.actor if len(obj.actor) <= 24 else obj.actor[:22] + "…"
        return format_html('<span title="{}">{}</span>', obj.actor, shown)

    @admin.display(description="at", ordering="at")
    def when(self, obj: DurableHistory) -> str:
        return _short_time(obj.at)


if HUMAN_TASKS:
    @admin.register(HumanTask)
    class HumanTaskAdmin(_ReadOnly):
        # Five columns (fits 1280 px): user, group and permission in one "assigned to".
        list_display = ("waiting_in", "title", "event", "assigned_to", "due_at")
        list_select_related = ("assignee_user", "assignee_group")
        search_fields = ("=instance__instance_id", "title")

        @admin.display(description="instance (branch)", ordering="instance_id")
        def waiting_in(self, obj: HumanTask) -> str:
            """The instance, and the parallel branch when the task is a branch's (one row per waiting branch)."""
            if obj.branch:
                return format_html("{}<br>branch {}", obj.instance_id, obj.branch)
            return obj.instance_id

        @admin.display(description="assigned to")
        def assigned_to(self, obj: HumanTask) -> str:
            parts = [f"user {obj.assignee_user}" if obj.assignee_user_id else "",
                     f"group {obj.assignee_group}" if obj.assignee_group_id else "",
                     f"permission {obj.permission}" if obj.permission else ""]
            return " or ".join(p for p in parts if p)

from . import scheduleadmin  # noqa: E402,F401  (registers the schedules' admin: durable_django.scheduleadmin)
