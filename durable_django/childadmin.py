"""The admin's part of child instances (``durable.start_child``): the parent and children of an instance, and a
changelist filter by parent (see :mod:`durable_django.children`)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.http import urlencode

from .limits import bad_character
from .models import FINISHED, DurableInstance

#: How many children an instance's page lists (the rest: the changelist filtered by parent).
CHILDREN_SHOWN = 200


class ParentFilter(admin.SimpleListFilter):
    """Instances with a parent, without one, or the children of one instance (``?parent=<id>``)."""

    title = "parent"
    parameter_name = "parent"

    def lookups(self, request, model_admin):
        return [("__any__", "has a parent"), ("__none__", "has no parent")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "__any__":
            return queryset.filter(parent__isnull=False)
        if value == "__none__":
            return queryset.filter(parent__isnull=True)
        if value:
            if bad_character(value) is not None:
                messages.warning(request, f"Ignored the parent filter {value!r}: not an instance id.")
                return queryset
            return queryset.filter(parent_id=value)
        return queryset


def _change_url(instance_id: str) -> str:
    return reverse("admin:durable_django_durableinstance_change", args=[instance_id])


def family_context(inst: DurableInstance) -> dict[str, Any]:
    """The instance page's parent (with its link) and children (status, link; the first CHILDREN_SHOWN)."""
    rows = list(inst.children.order_by("created_at", "instance_id")
                .values_list("instance_id", "status", "program", "on_parent_close")[:CHILDREN_SHOWN + 1])
    more = len(rows) > CHILDREN_SHOWN
    children = [{"instance_id": iid, "status": st, "program": prog.rpartition(".")[2], "on_parent_close": policy,
                 "url": _change_url(iid), "finished": st in FINISHED}
                for iid, st, prog, policy in rows[:CHILDREN_SHOWN]]
    changelist = reverse("admin:durable_django_durableinstance_changelist")
    return {
        "parent": ({"instance_id": inst.parent_id, "url": _change_url(inst.parent_id),
                    "exists": DurableInstance.objects.filter(pk=inst.parent_id).exists()}
                   if inst.parent_id else None),
        "children": children, "children_more": more,
        "children_url": f"{changelist}?{urlencode({'parent': inst.instance_id})}",
    }
