"""Expenses and their payments. The approval process itself is plain code in durable_programs.py."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Expense(models.Model):
    class State(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        AWAITING_MANAGER = "awaiting_manager", "Waiting for the manager"
        APPROVED = "approved", "Approved, being paid"
        AWAITING_FINANCE = "awaiting_finance", "Waiting for finance"
        ESCALATED = "escalated", "Escalated to the director"
        REJECTED = "rejected", "Rejected"
        PAID = "paid", "Paid"

    employee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="expenses")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    description = models.CharField(max_length=200)
    state = models.CharField(max_length=20, choices=State.choices, default=State.SUBMITTED)
    decided_by = models.CharField(max_length=150, blank=True, default="")
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


class Payment(models.Model):
    """Written by a durable step: exactly once per expense (the one-to-one makes a second one an error)."""

    expense = models.OneToOneField(Expense, on_delete=models.PROTECT, related_name="payment")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    reference = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.reference
