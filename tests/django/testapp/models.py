from django.db import models


class SideEffect(models.Model):
    """A row written by a durable step; tests count them to prove exactly-once."""

    key = models.CharField(max_length=100, db_index=True)
    note = models.CharField(max_length=100, blank=True, default="")


class Order(models.Model):
    status = models.CharField(max_length=20, default="new")
    total = models.IntegerField(default=0)


class FlowMark(models.Model):
    """One step of a flow-controlled test program: when it started and ended (tests/django/test_flow_control.py)."""

    tag = models.CharField(max_length=100, db_index=True)
    key = models.CharField(max_length=100, blank=True, default="")
    start = models.FloatField()
    end = models.FloatField()
