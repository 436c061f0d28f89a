"""One row per wait of a person: what it waits for and who may answer.

An instance has one row per live human-task wait: its single wait (branch
``""``), or one per parallel branch that waits for a person (the branch's
path, e.g. ``"0.1"``), each answered on its own.

The row is derived data, rebuilt from the instance's signed state (the truth)
by :mod:`durable_django.humantasks.sync` after every transition; it exists so
that "what may I act on" is one indexed query instead of unpickling every
paused instance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils.text import slugify
from django.utils.translation import gettext_lazy as _

from durable_django.models import DurableInstance

if TYPE_CHECKING:
    from .assignment import Wait


class HumanTaskQuerySet(models.QuerySet):
    def for_user(self, user) -> HumanTaskQuerySet:
        """Tasks ``user`` may answer: assigned to them, to one of their groups, or to a permission they have
        (unassigned ones to users who may publish events), as :func:`assignment.may_answer` decides."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superuser:
            return self.exclude(exclude_user=user.get_username())
        perms = user.get_all_permissions()
        q = Q(assignee_user=user) | Q(assignee_group__in=user.groups.all())
        if perms:
            q |= Q(permission__in=perms)
        if "durable_django.publish_durableevent" in perms:  # unassigned waits (a form only): any publisher
            q |= Q(assignee_user=None, assignee_group=None, permission="")
        return self.filter(q).exclude(exclude_user=user.get_username())


class HumanTask(models.Model):
    instance = models.ForeignKey(DurableInstance, on_delete=models.CASCADE, related_name="human_tasks",
                                 verbose_name=_("instance"))
    #: The waiting branch's path (``durable.gather``); "" for an instance's own wait.
    branch = models.CharField(_("branch"), max_length=200, blank=True, default="")
    event = models.CharField(_("event"), max_length=200)
    title = models.CharField(_("title"), max_length=255, blank=True, default="")
    assignee_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+", verbose_name=_("user"))
    assignee_group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                       verbose_name=_("group"))
    permission = models.CharField(_("permission"), max_length=255, blank=True, default="",
                                  help_text=_("app_label.codename"))
    exclude_user = models.CharField(_("never answered by"), max_length=150, blank=True, default="",
                                    help_text=_("Username that may not answer it (e.g. who submitted it)."))
    # A copy for display only: the task pages import the form named in the signed state, never this column.
    form = models.CharField(_("form"), max_length=255, blank=True, default="")
    schema = models.JSONField(_("schema"), null=True, blank=True, encoder=DjangoJSONEncoder)
    due_at = models.DateTimeField(_("due at"), null=True, blank=True)
    instance_version = models.PositiveIntegerField(_("instance version"), default=0)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    objects = HumanTaskQuerySet.as_manager()

    #: Not a column: the verified wait, set on the rows the task pages show (``views.signed_task``).
    wait: Wait

    class Meta:
        verbose_name = _("human task")
        verbose_name_plural = _("human tasks")
        ordering = ("created_at",)
        indexes = [
            models.Index(fields=["permission"], name="durable_task_perm"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["instance", "branch"], name="durable_task_one_per_branch"),
        ]

    def __str__(self) -> str:
        return self.title or f"{self.event} ({self.instance_id})"

    @property
    def branch_slug(self) -> str:
        """The branch path in an HTML id (``"0.1/2.0"`` -> ``"0-1_2-0"``: distinct paths stay distinct)."""
        return self.branch.replace(".", "-").replace("/", "_")

    @property
    def key(self) -> str:
        """Unique on a page: the instance and the branch (an HTML id or a form's ``auto_id`` prefix)."""
        return f"{slugify(self.instance_id)}-b{self.branch_slug}" if self.branch else slugify(self.instance_id)


class RepairCursor(models.Model):
    """Where the periodic repair stopped, kept in the database so that a new process (a cron
    ``durable_resume``, a restarted worker) continues from it instead of re-reading every waiting instance."""

    name = models.CharField(max_length=50, primary_key=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    instance_id = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        verbose_name = _("human-task repair cursor")
        default_permissions = ()
