"""The schedules' admin: a list with next run times, pause and resume actions, an edit form that checks the timing.

Kept apart from :mod:`durable_django.admin` (which imports it, so that it is
registered). Pausing and resuming need the change permission of
``DurableSchedule``, as editing does. Schedules declared in code
(``declared``) show their definition read-only: the next ``sync`` would
overwrite an edit; pause and resume still work on them.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from . import clock, schedules
from .models import DurableSchedule

#: Upcoming ticks shown on a schedule's page.
UPCOMING_SHOWN = 5
TIMING_FIELDS = ("cron", "interval_seconds", "timezone")
DEFINITION_FIELDS = ("program", "args", "kwargs", *TIMING_FIELDS, "overlap", "catchup", "max_catchup")


class ScheduleForm(forms.ModelForm):
    """Refuses a bad cron expression, an unknown time zone, or both/neither of cron and interval."""

    class Meta:
        model = DurableSchedule
        fields = "__all__"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk and self.instance.declared:
            return data  # definition fields are read-only (not in the form)
        try:
            schedules.Timing(data.get("cron") or "", data.get("interval_seconds"), data.get("timezone") or "UTC")
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc
        name = data.get("name") or ""
        if "@" in name:
            self.add_error("name", "A schedule's name may not contain '@' (it separates the name from the tick in "
                                   "instance ids).")
        return data


@admin.register(DurableSchedule)
class DurableScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "program", "when", "next_run", "last_run", "last_instance", "is_active")
    list_filter = ("paused", "declared", "overlap", "catchup")
    search_fields = ("name", "program")
    ordering = ("name",)
    actions = ["pause_selected", "resume_selected"]
    fieldsets = (
        (None, {"fields": ("name", "program", "args", "kwargs")}),
        ("When", {"fields": ("cron", "interval_seconds", "timezone", "upcoming")}),
        ("Policies", {"fields": ("overlap", "catchup", "max_catchup")}),
        ("State", {"fields": ("paused", "next_run_at", "last_run_at", "last_instance_id", "last_note", "declared",
                              "created_at", "updated_at")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: DurableSchedule | None = None) -> tuple[str, ...]:
        fixed = ("upcoming", "next_run_at", "last_run_at", "last_instance_id", "last_note", "declared", "created_at",
                 "updated_at")
        if obj is not None and obj.declared:
            return ("name", *DEFINITION_FIELDS, *fixed)
        return fixed

    def save_model(self, request: HttpRequest, obj: DurableSchedule, form: forms.ModelForm, change: bool) -> None:
        """A new schedule, or a changed cron/interval/time zone, starts from the next tick after now."""
        if not change or obj.next_run_at is None or set(form.changed_data) & set(TIMING_FIELDS):
            obj.next_run_at = schedules.timing_of(obj).next_after(clock.now())
        super().save_model(request, obj, form, change)

    # -- columns ------------------------------------------------------------------------------
    @admin.display(description="when")
    def when(self, obj: DurableSchedule) -> str:
        what = obj.cron if obj.cron else f"every {obj.interval_seconds} s"
        return f"{what} ({obj.timezone})" if obj.cron else what

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, obj: DurableSchedule) -> str:
        if obj.paused:
            return "paused"
        return _in_zone(obj.next_run_at, obj.timezone) if obj.next_run_at else "-"

    @admin.display(description="last tick", ordering="last_run_at")
    def last_run(self, obj: DurableSchedule) -> str:
        return _in_zone(obj.last_run_at, obj.timezone) if obj.last_run_at else "-"

    @admin.display(description="last instance")
    def last_instance(self, obj: DurableSchedule) -> str:
        if not obj.last_instance_id:
            return "-"
        url = reverse("admin:durable_django_durableinstance_change", args=(quote(obj.last_instance_id),),
                      current_app=self.admin_site.name)
        return format_html('<a href="{}">{}</a>', url, obj.last_instance_id)

    @admin.display(description="active", boolean=True, ordering="paused")
    def is_active(self, obj: DurableSchedule) -> bool:
        return not obj.paused

    @admin.display(description="upcoming ticks")
    def upcoming(self, obj: DurableSchedule) -> str:
        if obj.pk is None:
            return "-"
        try:
            timing = schedules.timing_of(obj)
        except ValueError as exc:
            return f"cannot compute: {exc}"
        ticks, t = [], clock.now()
        for _ in range(UPCOMING_SHOWN):
            t = timing.next_after(t)
            ticks.append((_in_zone(t, obj.timezone),))
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ticks))

    # -- actions ------------------------------------------------------------------------------
    @admin.action(description="Pause the selected schedules", permissions=["change"])
    def pause_selected(self, request: HttpRequest, queryset: QuerySet[DurableSchedule]) -> None:
        user = request.user.get_username() if request.user.is_authenticated else ""
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            schedules.pause(name, note=f"paused by {user} at {timezone.now():%Y-%m-%d %H:%M} UTC")
        self.message_user(request, f"{len(names)} schedule(s) paused.", messages.SUCCESS)

    @admin.action(description="Resume the selected schedules (from their next tick)", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[DurableSchedule]) -> None:
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            schedules.resume(name)
        self.message_user(request, f"{len(names)} schedule(s) resumed.", messages.SUCCESS)


def _in_zone(at: Any, zone: str) -> str:
    """``at`` in the schedule's own time zone (where its cron is read), with the UTC time beside it."""
    at = schedules._aware(at)
    try:
        local = at.astimezone(ZoneInfo(zone))
    except (ValueError, KeyError):
        local = at
    text = f"{local:%Y-%m-%d %H:%M:%S %Z}"
    return text if local.utcoffset() == timedelta(0) else f"{text} ({at.astimezone(UTC):%H:%M} UTC)"
