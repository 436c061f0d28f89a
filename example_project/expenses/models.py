"""Expenses and their payments. The approval process itself is plain code in durable_programs.py."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Expense(models.Model):
    class State(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        AWAITING_APPROVALS = "awaiting_approvals", "Waiting for the manager and finance"
        AWAITING_MANAGER = "awaiting_manager", "Waiting for the manager"
        APPROVED = "approved", "Approved, being paid"
        AWAITING_FINANCE = "awaiting_finance", "Waiting for finance"
        ESCALATED = "escalated", "Escalated to the director"
        REJECTED = "rejected", "Rejected"
        PAID = "paid", "Paid"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Stopped by an error"

    #: What the outcome looks like (the status bar's colour): ``positive``, ``negative``, ``neutral`` or "" (open).
    TONES: dict[str, str] = {State.PAID: "positive", State.REJECTED: "negative", State.FAILED: "negative",
             State.CANCELLED: "neutral"}
    #: Who decided, in words, by the role recorded in ``decided_by``.
    ROLES = {"manager": "the manager", "finance": "finance", "director": "the director"}

    employee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="expenses")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    description = models.CharField(max_length=200)
    state = models.CharField(max_length=20, choices=State.choices, default=State.SUBMITTED)
    #: The role of the last decision ("manager", "finance" or "director") and the user who made it.
    decided_by = models.CharField(max_length=150, blank=True, default="")
    decider = models.CharField(max_length=150, blank=True, default="")
    comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        permissions = [("approve_escalated", "Can approve escalated expenses")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.description} ({self.amount})"

    @property
    def instance_id(self) -> str:
        return f"expense-{self.pk}"

    @staticmethod
    def pk_of(instance_id: str) -> int | None:
        """The expense of an approval instance id (``expense-<pk>``), or None."""
        prefix, _, pk = instance_id.partition("-")
        return int(pk) if prefix == "expense" and pk.isdigit() else None

    def shown_state(self, process_status: str) -> str:
        """The state to show next to the process's ``process_status``: a cancelled or failed process ends an
        open expense even before the receivers (receivers.py) have written that."""
        ended = {"cancelled": self.State.CANCELLED, "failed": self.State.FAILED}.get(process_status)
        return ended if ended is not None and self.state not in (self.State.PAID, self.State.REJECTED) else self.state

    @property
    def tone(self) -> str:
        return self.TONES.get(self.state, "")

    @property
    def decision_text(self) -> str:
        """The last decision in words: "Approved by dave (the director)"; "" before any."""
        if not (self.decided_by or self.decider):
            return ""
        verb = "Rejected" if self.state == self.State.REJECTED else "Approved"
        role = self.ROLES.get(self.decided_by, self.decided_by)
        who = f"{self.decider} ({role})" if self.decider and role else (self.decider or role)
        return f"{verb} by {who}"


class Payment(models.Model):
    """Written by a durable step: exactly once per expense (the one-to-one makes a second one an error)."""

    expense = models.OneToOneField(Expense, on_delete=models.PROTECT, related_name="payment")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    reference = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.reference
