"""A trip and what booking it wrote: hotel reservations, card charges and refunds, the flight.

Every row here is written by a ``db_step`` of ``durable_programs.book_trip``,
so it commits together with the checkpoint after the step: exactly once. A
compensation never deletes what was done; it writes what undoes it (a
release time, a refund row), so the admin shows the whole story.
"""

from __future__ import annotations

from django.db import models


class Trip(models.Model):
    class State(models.TextChoices):
        BOOKING = "booking", "Booking"
        AWAITING_APPROVAL = "awaiting_approval", "Waiting for the manager"
        BOOKED = "booked", "Booked"
        COMPENSATED = "compensated", "Undone (hotel released, card refunded)"

    class Flight(models.TextChoices):
        """How the (simulated) airline answers: lets the demo and the tests show every path."""

        OK = "ok", "Books at once"
        FLAKY = "flaky", "Down for the first attempt, then books"
        DOWN = "down", "Down at every attempt (retries run out)"
        FULL = "full", "No seats (not retried)"

    traveller = models.CharField(max_length=100)
    destination = models.CharField(max_length=100)
    nights = models.PositiveSmallIntegerField(default=2)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    needs_approval = models.BooleanField(default=False, help_text="Wait for a manager's approval before the flight.")
    flight = models.CharField(max_length=10, choices=Flight.choices, default=Flight.OK)
    state = models.CharField(max_length=20, choices=State.choices, default=State.BOOKING)
    #: Why it was undone: the error, the rejection or the cancellation.
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"#{self.pk} {self.traveller} to {self.destination}"

    @property
    def instance_id(self) -> str:
        return f"trip-{self.pk}"


class HotelReservation(models.Model):
    """Held by the first step; ``released_at`` is set by the compensation."""

    trip = models.ForeignKey(Trip, on_delete=models.CASCADE, related_name="hotel_reservations")
    reference = models.CharField(max_length=40, unique=True)
    nights = models.PositiveSmallIntegerField()
    held_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.reference


class CardTransaction(models.Model):
    """A charge, or the refund that undoes it (``refund_of``)."""

    class Kind(models.TextChoices):
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"

    trip = models.ForeignKey(Trip, on_delete=models.CASCADE, related_name="card_transactions")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    reference = models.CharField(max_length=40, unique=True)
    #: A refund names its charge; one refund per charge (the one-to-one makes a second one an error).
    refund_of = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT, related_name="refund")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.reference} ({self.amount})"


class FlightBooking(models.Model):
    """The last step's row: one per trip."""

    trip = models.OneToOneField(Trip, on_delete=models.CASCADE, related_name="flight_booking")
    reference = models.CharField(max_length=40, unique=True)
    attempt = models.PositiveSmallIntegerField(help_text="The attempt of the step that booked it.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.reference
