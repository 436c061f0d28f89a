"""Book a trip as a saga: reserve the hotel, charge the card, book the flight; undo on failure.

Each step is a ``db_step`` (its rows commit with the checkpoint after it:
exactly once) with a retry policy (``durable.step``): a transient error is
tried again after a backoff, a durable timer, so no worker waits meanwhile.
When a later step fails for good (its retries ran out, or the error is not
retryable), when the manager rejects the trip, or when an operator cancels
the instance while it waits (``InstanceCancelled`` is raised at that
``await``), the ``except`` block runs the compensations in reverse order:
refund the charge, release the hotel. Each compensation is a retried step of
its own, and is checkpointed like any step: a crash in the middle of them
resumes the cleanup, it does not start over. The error is raised again
afterwards, so the instance ends ``failed`` (or ``cancelled``), with the
trip marked *compensated*.
"""

from __future__ import annotations

import uuid

from django.utils import timezone

from durable import RetryPolicy, current_attempt, make_durable, step, wait_for_event
from durable_django import db_step

from .models import CardTransaction, FlightBooking, HotelReservation, Trip


class FlightSystemDown(Exception):
    """The airline did not answer: worth another attempt."""


class NoSeats(Exception):
    """The flight is full: retrying does not help."""


class TripRejected(Exception):
    """The manager said no."""


# --8<-- [start:policies]
#: Bookings: a few attempts, seconds apart.
BOOKING = RetryPolicy(max_attempts=3, initial_interval=2.0, backoff=2.0, max_interval=30.0)
#: The flight: the same, but a full flight is final.
FLIGHT = RetryPolicy(max_attempts=3, initial_interval=2.0, backoff=2.0, max_interval=30.0, non_retryable=(NoSeats,))
#: Compensations must get through: many attempts, up to a minute apart.
UNDO = RetryPolicy(max_attempts=10, initial_interval=1.0, backoff=2.0, max_interval=60.0)
# --8<-- [end:policies]


def _ref(prefix: str) -> str:
    return f"{prefix}-{timezone.now():%Y%m%d}-{uuid.uuid4().hex[:8]}"


@db_step
def load_trip(trip_id: int) -> dict:
    trip = Trip.objects.get(pk=trip_id)
    return {"needs_approval": trip.needs_approval, "price": str(trip.price), "title": str(trip)}


@step(retry=BOOKING)
@db_step
def reserve_hotel(trip_id: int) -> str:
    trip = Trip.objects.get(pk=trip_id)
    return HotelReservation.objects.create(trip=trip, reference=_ref("HOTEL"), nights=trip.nights).reference


@step(retry=BOOKING)
@db_step
def charge_card(trip_id: int) -> str:
    trip = Trip.objects.get(pk=trip_id)
    return CardTransaction.objects.create(trip=trip, kind=CardTransaction.Kind.CHARGE, amount=trip.price,
                                          reference=_ref("CHG")).reference


# --8<-- [start:book_flight]
@step(retry=FLIGHT)
@db_step
def book_flight(trip_id: int) -> str:
    """The simulated airline (``Trip.flight`` says how it answers). The row is written before the answer is
    known: when the attempt fails, its writes are rolled back, so a failed attempt leaves no booking behind."""
    trip = Trip.objects.get(pk=trip_id)
    attempt = current_attempt()
    booking = FlightBooking.objects.create(trip=trip, reference=_ref("FLT"), attempt=attempt)
    if trip.flight == Trip.Flight.FULL:
        raise NoSeats(f"no seats to {trip.destination}")
    if trip.flight == Trip.Flight.DOWN or (trip.flight == Trip.Flight.FLAKY and attempt == 1):
        raise FlightSystemDown(f"the airline did not answer (attempt {attempt})")
    return booking.reference
# --8<-- [end:book_flight]


@step(retry=UNDO)
@db_step
def refund(charge: str) -> str:
    """Undo ``charge_card``: a refund row naming the charge. Idempotent (a charge refunded already is not
    refunded again; the one-to-one ``refund_of`` would refuse it anyway), as an undo should be."""
    original = CardTransaction.objects.get(reference=charge)
    done = CardTransaction.objects.filter(refund_of=original).values_list("reference", flat=True).first()
    if done is not None:
        return done
    return CardTransaction.objects.create(trip=original.trip, kind=CardTransaction.Kind.REFUND,
                                          amount=-original.amount, reference=_ref("RFD"),
                                          refund_of=original).reference


@step(retry=UNDO)
@db_step
def release_hotel(reservation: str) -> None:
    """Undo ``reserve_hotel``."""
    HotelReservation.objects.filter(reference=reservation, released_at__isnull=True).update(
        released_at=timezone.now())


@db_step
def set_state(trip_id: int, state: str, note: str = "") -> None:
    Trip.objects.filter(pk=trip_id).update(state=state, note=note)


# --8<-- [start:book_trip]
async def compensate(trip_id: int, hotel: str, charge: str, why: str) -> None:
    """Undo what was done, newest first. Plain durable code: each undo is a checkpointed step."""
    if charge:
        await refund(charge)
    if hotel:
        await release_hotel(hotel)
    await set_state(trip_id, Trip.State.COMPENSATED, why)


@make_durable
async def book_trip(trip_id: int) -> dict:
    hotel = charge = ""
    try:
        trip = await load_trip(trip_id)
        hotel = await reserve_hotel(trip_id)
        charge = await charge_card(trip_id)
        if trip["needs_approval"]:
            await set_state(trip_id, Trip.State.AWAITING_APPROVAL)
            decision = await wait_for_event("approval", title=f"Approve the trip {trip['title']}?")
            if decision.get("decision") != "approve":
                raise TripRejected(decision.get("comment", ""))
        flight = await book_flight(trip_id)
    except TripRejected as rejected:  # a business outcome: undo, and end normally
        await compensate(trip_id, hotel, charge, f"rejected: {rejected}")
        return {"rejected": str(rejected)}
    except Exception as exc:  # a step failed for good, or the instance was cancelled (InstanceCancelled)
        await compensate(trip_id, hotel, charge, f"{type(exc).__name__}: {exc}")
        raise  # the instance ends failed (cancelled for a cancellation); the trip shows it was undone
    await set_state(trip_id, Trip.State.BOOKED)
    return {"hotel": hotel, "charge": charge, "flight": flight}
# --8<-- [end:book_trip]
