"""The saga example (example_project/trips): book a trip, and undo it when a later step fails or it is
cancelled.

Runs inline on a fake clock (:class:`durable_django.testing.DurableTestEnv`), so the retry backoffs (durable
timers) pass at once, with the executor's real transactions (``transaction=True``): a failed attempt's writes
are rolled back, a compensation commits with its checkpoint.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.management import call_command

from durable import InstanceCancelled
from durable_django.models import DurableHistory, Status
from durable_django.testing import DurableTestEnv
from example_project.trips.durable_programs import NoSeats, book_trip
from example_project.trips.models import CardTransaction, FlightBooking, HotelReservation, Trip

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
