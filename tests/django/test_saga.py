"""The saga example (example_project/trips): book a trip, and undo it when a later step fails or it is
cancelled.

Runs inline on a fake clock (:class:`durable_django.testing.DurableTestEnv`), so the retry backoffs (durable
timers) pass at once, with the executor's real transactions (``transaction=True``): a failed attempt's writes
are rolled back, a compensation commits with its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

import durable_django as dd
from durable import InstanceCancelled
from durable_django.models import FINISHED, DurableHistory, DurableInstance, Status
from durable_django.testing import DurableTestEnv
from example_project.trips.durable_programs import NoSeats, book_trip
from example_project.trips.models import CardTransaction, FlightBooking, HotelReservation, Trip
from tests.django.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def env():
    with DurableTestEnv() as e:
        yield e


def new_trip(flight: str = Trip.Flight.OK, approval: bool = False) -> Trip:
    return Trip.objects.create(traveller="alice", destination="Lisbon", nights=3, price=Decimal("480.00"),
                               flight=flight, needs_approval=approval)


def start(env: DurableTestEnv, trip: Trip):
    return env.start(book_trip, trip.pk, instance_id=trip.instance_id, link=trip)


def assert_compensated(trip: Trip, note: str) -> None:
    trip.refresh_from_db()
    assert trip.state == Trip.State.COMPENSATED
    assert note in trip.note
    hotel = HotelReservation.objects.get(trip=trip)
    assert hotel.released_at is not None
    charge = CardTransaction.objects.get(trip=trip, kind=CardTransaction.Kind.CHARGE)
    refund = CardTransaction.objects.get(trip=trip, kind=CardTransaction.Kind.REFUND)
    assert refund.refund_of == charge and refund.amount == -charge.amount
    assert not FlightBooking.objects.filter(trip=trip).exists()


def test_happy_path_books_hotel_card_and_flight(env):
    trip = new_trip()
    inst = start(env, trip)
    assert inst.status == Status.COMPLETED
    result = env.result(trip.instance_id)
    trip.refresh_from_db()
    assert trip.state == Trip.State.BOOKED and trip.note == ""
    hotel = HotelReservation.objects.get(trip=trip)
    assert hotel.reference == result["hotel"] and hotel.released_at is None
    assert list(CardTransaction.objects.filter(trip=trip).values_list("kind", "reference")) == [
        (CardTransaction.Kind.CHARGE, result["charge"])]
    assert FlightBooking.objects.get(trip=trip).reference == result["flight"]
    env.run(trip.instance_id)  # a redelivered wake-up runs nothing again
    assert HotelReservation.objects.count() == CardTransaction.objects.count() == FlightBooking.objects.count() == 1


def test_a_flight_that_fails_once_is_retried_after_its_backoff(env):
    trip = new_trip(Trip.Flight.FLAKY)
    inst = start(env, trip)
    # attempt 1 failed: a durable timer until attempt 2; its booking row was rolled back
    assert inst.status == Status.PAUSED and inst.wait_kind == "timer"
    assert not FlightBooking.objects.filter(trip=trip).exists()
    env.advance(1)
    assert env.status(trip.instance_id) == Status.PAUSED  # the backoff is 2 s (+/- 10 %)
    env.advance(2)
    env.assert_completed(trip.instance_id)
    assert FlightBooking.objects.get(trip=trip).attempt == 2
    trip.refresh_from_db()
    assert trip.state == Trip.State.BOOKED
    # the hotel and the card were not booked twice by the retry
    assert HotelReservation.objects.filter(trip=trip).count() == 1
    assert CardTransaction.objects.filter(trip=trip).count() == 1


def test_a_full_flight_fails_for_good_and_the_saga_compensates(env):
    trip = new_trip(Trip.Flight.FULL)
    inst = start(env, trip)
    assert inst.status == Status.FAILED  # not retryable: no backoff, the compensations ran in the same run
    assert_compensated(trip, "NoSeats: no seats to Lisbon")
    with pytest.raises(NoSeats):
        env.result(trip.instance_id)


def test_retries_run_out_then_the_saga_compensates(env):
    trip = new_trip(Trip.Flight.DOWN)
    assert start(env, trip).status == Status.PAUSED
    env.advance(2.5)  # attempt 2 failed too
    assert env.status(trip.instance_id) == Status.PAUSED
    assert not HotelReservation.objects.filter(trip=trip, released_at__isnull=False).exists()
    env.advance(5)  # attempt 3 (after ~4 s): the last one
    assert env.status(trip.instance_id) == Status.FAILED
    assert_compensated(trip, "FlightSystemDown: the airline did not answer (attempt 3)")


def test_cancel_while_waiting_for_approval_runs_the_compensations(env):
    trip = new_trip(approval=True)
    inst = start(env, trip)
    env.assert_waiting(trip.instance_id, "approval")
    trip.refresh_from_db()
    assert trip.state == Trip.State.AWAITING_APPROVAL and inst.status == Status.PAUSED
    env.cancel(trip.instance_id, "trip called off")
    env.settle()  # the cleanup runs where the instance runs (inline here; a worker in production)
    assert env.status(trip.instance_id) == Status.CANCELLED
    assert_compensated(trip, "InstanceCancelled")
    with pytest.raises(InstanceCancelled):
        env.result(trip.instance_id)
    # the compensations are steps like any: a later wake-up runs none of them again
    env.run(trip.instance_id)
    assert CardTransaction.objects.filter(trip=trip, kind=CardTransaction.Kind.REFUND).count() == 1


def test_rejection_compensates_and_completes(env):
    trip = new_trip(approval=True)
    start(env, trip)
    env.publish(trip.instance_id, "approval", {"decision": "reject", "comment": "too expensive"})
    assert env.result(trip.instance_id) == {"rejected": "too expensive"}
    assert_compensated(trip, "rejected: too expensive")


def test_approval_then_flight(env):
    trip = new_trip(approval=True)
    start(env, trip)
    env.publish(trip.instance_id, "approval", {"decision": "approve"})
    env.assert_completed(trip.instance_id)
    trip.refresh_from_db()
    assert trip.state == Trip.State.BOOKED


def test_book_trip_command_starts_the_saga(env):
    with env.eagerly():
        call_command("book_trip", "--destination", "Porto", "--flight", "full")
    trip = Trip.objects.get(destination="Porto")
    env.settle()
    assert env.status(trip.instance_id) == Status.FAILED
    assert_compensated(trip, "NoSeats")
    assert DurableHistory.objects.filter(instance_id=trip.instance_id).exists()


def test_admin_shows_the_bookings_and_compensations(env, admin_client):
    trip = new_trip(Trip.Flight.FULL)
    start(env, trip)
    page = admin_client.get(f"/admin/trips/trip/{trip.pk}/change/").content.decode()
    refund = CardTransaction.objects.get(trip=trip, kind=CardTransaction.Kind.REFUND)
    assert refund.reference in page and HotelReservation.objects.get(trip=trip).reference in page
    assert trip.instance_id in page
    assert "Undone" in admin_client.get("/admin/trips/trip/").content.decode()


@pytest.fixture
def unread_queue(settings):
    """Wake-ups of the test process go to a queue no worker reads: the test runs the instances itself."""
    queue = f"{settings.DURABLE['QUEUE']}-saga-unread"
    settings.DURABLE = {**settings.DURABLE, "QUEUE": queue}
    yield queue
    from example_project.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


@pytest.mark.timeout(240)
def test_a_worker_killed_at_any_checkpoint_neither_repeats_nor_forgets_a_compensation(unread_queue, tmp_path):
    """Trip n's process is SIGKILLed right after checkpoint n commits (n = 1 .. all but the last), the saga's
    compensations included; a new process takes over. Every trip ends compensated with one hotel reservation
    (released), one charge, one refund and no flight."""
    with DurableTestEnv() as env:  # the reference: how many checkpoints the failing saga writes
        ref = new_trip(Trip.Flight.FULL)
        start(env, ref)
    total = DurableInstance.objects.get(pk=ref.instance_id).steps
    assert total >= 6  # load, hotel, charge, then the compensations: refund, release, state, ...
    trips = [new_trip(Trip.Flight.FULL) for _ in range(1, total)]
    ids = [t.instance_id for t in trips]
    plan = {t.instance_id: f"checkpoint:{n}" for n, t in enumerate(trips, start=1)}
    crash_dir = tmp_path / "crashes"
    crash_dir.mkdir()
    env_vars = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
                "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"]), "DURABLE_TEST_QUEUE": unread_queue,
                "DURABLE_LEASE_SECONDS": "1", "DURABLE_TEST_CRASH_PLAN": json.dumps(plan),
                "DURABLE_TEST_CRASH_DIR": str(crash_dir),
                "DURABLE_TEST_ON_CHECKPOINT": "tests.django.testapp.durable_programs.crash_hook",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for t in trips:
        dd.start(book_trip, t.pk, instance_id=t.instance_id, link=t)
    kills = 0
    deadline = time.monotonic() + 180
    while True:
        current = DurableInstance.objects.filter(pk__in=ids).values_list("pk", "status", "lease_expires_at")
        todo = [pk for pk, status, lease in current
                if status not in FINISHED and (lease is None or lease <= timezone.now())]
        if all(status in FINISHED for _, status, _ in current):
            break
        assert time.monotonic() < deadline, f"trips did not finish: {list(current)}"
        if not todo:  # a killed process's lease (1 s) has not expired yet
            time.sleep(0.05)
            continue
        out = subprocess.run([sys.executable, "manage.py", "durable_resume", "--sync", *todo], cwd=ROOT,
                             env=env_vars, capture_output=True, text=True, timeout=120)
        if out.returncode == 1:  # --sync exits 1 when a run ends failed: here the saga's own NoSeats, nothing else
            failures = [line for line in out.stderr.splitlines() if " is failed: " in line]
            assert failures and all(line.endswith("NoSeats: no seats to Lisbon") for line in failures), out.stderr
        else:
            assert out.returncode in (0, -signal.SIGKILL), out.stdout + out.stderr
        kills += out.returncode == -signal.SIGKILL
    assert {p.name.removesuffix(".crashed") for p in crash_dir.glob("*.crashed")} == set(ids)
    assert kills == len(ids)
    for t in trips:
        assert DurableInstance.objects.get(pk=t.instance_id).status == Status.FAILED, plan[t.instance_id]
        assert HotelReservation.objects.filter(trip=t).count() == 1, plan[t.instance_id]
        assert CardTransaction.objects.filter(trip=t, kind=CardTransaction.Kind.CHARGE).count() == 1
        assert_compensated(t, "NoSeats")


@pytest.mark.timeout(120)
def test_real_worker_retries_the_flight_then_compensates(worker_factory):
    """The deployment path: the command starts the saga, a Celery worker process runs it; the backoffs between
    the flight's attempts are durable timers (ETA wake-ups), then the compensations run."""
    from tests.django.conftest import wait_until

    worker_factory()
    call_command("book_trip", "--destination", "Faro", "--flight", "down")
    trip = Trip.objects.get(destination="Faro")
    t0 = time.monotonic()
    history = DurableHistory.objects.filter(instance_id=trip.instance_id).values_list("kind", "detail")
    wait_until(lambda: DurableInstance.objects.filter(pk=trip.instance_id, status=Status.FAILED).exists(),
               timeout=60, message=lambda: f"the saga to fail for good; history: {list(history)}")
    assert time.monotonic() - t0 >= 1.8 + 3.6  # two backoffs (2 s and 4 s, +/- 10 %) were waited for
    assert_compensated(trip, "FlightSystemDown: the airline did not answer (attempt 3)")
    assert HotelReservation.objects.filter(trip=trip).count() == 1
