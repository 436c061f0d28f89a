"""The admin's side of forks: the "Checkpoints" section of an instance's page and the "fork from here" page.

Kept apart from :mod:`durable_django.admin` (a mixin of its ``DurableInstanceAdmin``). The page shows the
checkpoint's frames and locals as the detail page does (truncated ``repr``, nothing executed), with a
form to change JSON locals before the fork. Viewing the page and forking need the permission
``durable_django.fork_durableinstance``; the form is CSRF-protected (the admin's views are), and the fork is
recorded in both instances' history under the operator's name.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from . import forks, operations
from .exceptions import DurableDjangoError
from .limits import parse_json
from .models import DurableInstance

#: Newest kept checkpoints listed on an instance's page.
CHECKPOINTS_SHOWN = 50
FORK_TEMPLATE = "admin/durable_django/durableinstance/fork.html"


class ForkAdminMixin:
    """Adds the checkpoints section and the fork page to the instances' admin."""

    admin_site: Any
    opts: Any

    def has_fork_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("durable_django.fork_durableinstance")

    def fork_urls(self) -> list:
        info = self.opts.app_label, self.opts.model_name
        return [path("<path:object_id>/fork/<int:step>/", self.admin_site.admin_view(self.fork_view),
                     name="{}_{}_fork".format(*info))]

    def _fork_url(self, instance_id: str, step: int) -> str:
        return reverse("admin:durable_django_durableinstance_fork", args=(quote(instance_id), step),
                       current_app=self.admin_site.name)

    def fork_context(self, request: HttpRequest, inst: DurableInstance) -> dict:
        """The checkpoints section of the detail page (empty when the instance keeps no history)."""
        kept = forks.kept_checkpoints(inst.instance_id, limit=CHECKPOINTS_SHOWN)
        can = self.has_fork_permission(request)
        for row in kept:
            row["fork_url"] = self._fork_url(inst.instance_id, row["step"]) if can and row["status"] not in (
                "completed", "cancelled") else ""
        return {"checkpoints": kept, "can_fork": can}

    def fork_view(self, request: HttpRequest, object_id: str, step: int) -> HttpResponse:
        inst = self._get(request, object_id)  # type: ignore[attr-defined]  # DurableInstanceAdmin's
        if not self.has_fork_permission(request):
            raise PermissionDenied
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        try:
            state = forks.checkpoint_state(inst.instance_id, step)
        except (DurableDjangoError, forks.ForkRefused) as exc:
            self.message_user(request, str(exc), messages.ERROR)  # type: ignore[attr-defined]
            return HttpResponseRedirect(self._back_url(inst.instance_id))
        frames = operations.frames(state)
        errors: list[str] = []
        new_id = ""
        if request.method == "POST":
            new_id = request.POST.get("new_instance_id", "").strip()
            edits, errors = _edits(request.POST, frames)
            if not request.POST.get("confirm"):
                errors.append("Tick the confirmation box to fork.")
            if not errors:
                try:
                    fork = forks.fork(inst.instance_id, step, new_instance_id=new_id or None, locals=edits,
                                      actor=request.user.get_username())
                except (DurableDjangoError, ValueError) as exc:
                    errors.append(str(exc))
                else:
                    self.message_user(request, f"Forked checkpoint {step} into {fork.instance_id!r}.",  # type: ignore[attr-defined]
                                      messages.SUCCESS)
                    return HttpResponseRedirect(self._back_url(fork.instance_id))
            for row in frames:  # show what was typed, not the checkpoint's values again
                for local in row["locals"]:
                    typed = request.POST.get(f"local-{row['index']}-{local['name']}")
                    if typed is not None and local["json"] is not None:
                        local["json"] = typed
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "instance": inst, "step": step,
            "title": f"Fork {inst.instance_id} from checkpoint {step}", "frames": frames, "errors": errors,
            "checkpoint_status": state.get("status"), "wait": state.get("wait"), "new_instance_id": new_id,
            "back_url": self._back_url(inst.instance_id),
        }
        return TemplateResponse(request, FORK_TEMPLATE, context, status=400 if errors else 200)

    def _back_url(self, instance_id: str) -> str:
        return reverse("admin:durable_django_durableinstance_change", args=(quote(instance_id),),
                       current_app=self.admin_site.name)


def _edits(data: Any, frames: list[dict]) -> tuple[dict[str, Any], list[str]]:
    """The locals the operator changed: ``{"<frame>.<name>": value}``, and what could not be read."""
    edits: dict[str, Any] = {}
    errors: list[str] = []
    for row in frames:
        for local in row["locals"]:
            if local["json"] is None:
                continue  # not JSON: shown, never editable
            typed = data.get(f"local-{row['index']}-{local['name']}")
            if typed is None:
                continue
            try:
                value = parse_json(typed)
            except ValueError as exc:
                errors.append(f"{local['name']} (frame {row['index']}): not valid JSON: {exc}")
                continue
            if _canonical(value) != _canonical(json.loads(local["json"])):  # 1 and true differ
                edits[f"{row['index']}.{local['name']}"] = value
    return edits, errors


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
