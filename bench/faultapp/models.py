"""Side effects of the fault-injection process, and what the workers saw (for the suite's counts)."""

from django.db import models


class Account(models.Model):
    """One per instance; every step adds to its balance with an UPDATE (not idempotent: a repeat shows)."""

    key = models.CharField(max_length=100, unique=True)
    balance = models.IntegerField(default=0)


class Effect(models.Model):
    """A row per step; no unique constraint, so a step that ran twice leaves two rows to count."""

    key = models.CharField(max_length=100, db_index=True)
    label = models.CharField(max_length=20)
    created_at = models.DateTimeField(auto_now_add=True)


class WakeUp(models.Model):
    """An instance a worker's run task finished with (observer only: a killed run leaves none)."""

    instance_id = models.CharField(max_length=200, db_index=True)
    worker = models.CharField(max_length=200)
    outcome = models.CharField(max_length=40)
    redelivered = models.BooleanField(default=False)
    batch = models.BooleanField(default=False)
