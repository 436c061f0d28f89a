"""The list filters of the instances' admin changelist (program, linked object type, what it waits for, flow
control); the parent filter is in :mod:`durable_django.childadmin`."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType

from . import clock
from .db import ops
from .models import DurableInstance, Status


class ProgramFilter(admin.SimpleListFilter):
    title = "program"
    parameter_name = "program"

    def lookups(self, request, model_admin):
        return [(p, p.rsplit(".", 1)[-1] + f" ({p.rsplit('.', 1)[0]})" if "." in p else p)
                for p in _distinct_programs(200)]

    def queryset(self, request, queryset):
        return queryset.filter(program=self.value()) if self.value() else queryset


def _distinct_programs(limit: int) -> list[str]:
    """The distinct program paths in one query (on PostgreSQL a loose index scan, see the db package)."""
    return ops().distinct_programs(limit)


class LinkedTypeFilter(admin.SimpleListFilter):
    title = "linked object type"
    parameter_name = "linked"

    def lookups(self, request, model_admin):
        ids = DurableInstance.objects.exclude(content_type=None).order_by().values_list("content_type_id",
                                                                                      flat=True).distinct()
        return [(str(i), str(ContentType.objects.get_for_id(i))) for i in ids[:100]]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if not (value.isascii() and value.isdigit() and int(value) < 2**31):
            messages.warning(request, f"Ignored the linked object type filter {value!r}: not a content type id.")
            return queryset
        return queryset.filter(content_type_id=int(value))


class WaitFilter(admin.SimpleListFilter):
    title = "waits for"
    parameter_name = "waits"

    def lookups(self, request, model_admin):
        return [("event", "an event"), ("timer", "a timer"), ("branches", "parallel branches"),
                ("child", "a child"), ("children", "children"), ("overdue", "a wake time that has passed")]

    def queryset(self, request, queryset):
        if self.value() == "overdue":
            clock.sync()  # due times are database times (see durable_django.clock)
            return queryset.filter(status=Status.PAUSED, wake_at__lt=clock.now())
        if self.value() in ("event", "timer", "branches", "child", "children"):
            return queryset.filter(status=Status.PAUSED, wait_kind=self.value())
        return queryset


class FlowFilter(admin.SimpleListFilter):
    """Flow control (docs/flow-control.md): what waits for a concurrency slot or for its rate limit."""

    title = "flow control"
    parameter_name = "flow"

    def lookups(self, request, model_admin):
        return [("slot", "waits for a slot"), ("rate", "waits for its rate limit")]

    def queryset(self, request, queryset):
        if self.value() == "slot":
            return queryset.exclude(flow_waiting="").exclude(flow_waiting__startswith="rate:")
        if self.value() == "rate":
            return queryset.filter(flow_waiting__startswith="rate:")
        return queryset
