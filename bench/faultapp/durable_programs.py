"""The process of the fault-injection suite (autodiscovered by durable_django, imported by the workers).

Four exactly-once db_step side effects, an event wait and a durable timer
(``fault_process``); and ``partition_process``, whose middle step is long, for
the partition scenario (bench/faults/partition.py). Each
step writes an ``Effect`` row and adds to the instance's ``Account`` balance
with an UPDATE, so a step that ran twice (or a write that survived a killed
run) shows up as an extra row or a wrong balance. Each step also sleeps
``DURABLE_FAULTS_STEP_MS`` after its writes, which widens the window in which
a SIGKILL lands between a step's writes and its checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.db.models import F

import durable
from durable import make_durable
from durable_django import db_step

from .models import Account, Effect

#: Labels of the side effects and what each adds to the balance; an instance ends with one row each.
AMOUNTS = {"open": 0, "reserve": 10, "charge": 100, "ship": 1000}


def _pause() -> None:
    ms = float(os.environ.get("DURABLE_FAULTS_STEP_MS", "5"))
    if ms > 0:
        time.sleep(ms / 1000)


@db_step
def open_account(key: str) -> int:
    Account.objects.create(key=key)
    Effect.objects.create(key=key, label="open")
    _pause()
    return Effect.objects.filter(key=key).count()


@db_step
def record(key: str, label: str) -> int:
    Effect.objects.create(key=key, label=label)
    Account.objects.filter(key=key).update(balance=F("balance") + AMOUNTS[label])
    _pause()
    return Effect.objects.filter(key=key).count()


@make_durable
async def fault_process(key: str, nap: float):
    seen = [await open_account(key)]
    seen.append(await record(key, "reserve"))
    seen.append(await record(key, "charge"))
    payload = await durable.wait_for_event("go")
    await durable.sleep(nap)
    seen.append(await record(key, "ship"))
    return {"seen": seen, "payload": payload}


@db_step
def long_record(key: str, seconds: float) -> int:
    """A long step: its ``Effect`` row, then ``seconds`` of work with its transaction open.

    It tells the suite it has started (and in which process) by creating a file in
    ``DURABLE_FAULTS_MARKERS``, so that the suite cuts the worker off while it is inside the step.
    """
    Effect.objects.create(key=key, label="long")
    markers = os.environ.get("DURABLE_FAULTS_MARKERS")
    if markers and seconds > 0:
        Path(markers, f"{key}.{os.getpid()}.{time.time_ns()}").touch()
    time.sleep(seconds)
    return Effect.objects.filter(key=key).count()


@make_durable
async def partition_process(key: str, seconds: float):
    seen = [await open_account(key)]
    seen.append(await long_record(key, seconds))
    seen.append(await record(key, "ship"))
    return {"seen": seen}
