"""``manage.py book_trip``: create a trip and start its booking saga (``trips.durable_programs.book_trip``)."""

from __future__ import annotations

from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import transaction

import durable_django

from ...durable_programs import book_trip
from ...models import Trip


class Command(BaseCommand):
    help = ("Book a trip (hotel, card, flight) as a saga. --flight chooses how the simulated airline answers: "
            "ok, flaky (retried once), down (retries run out: the hotel is released and the card refunded) or "
            "full (not retried). --approval waits for an 'approval' event before the flight; cancel the "
            "instance meanwhile to see the compensations run.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--traveller", default="alice")
        parser.add_argument("--destination", default="Lisbon")
        parser.add_argument("--nights", type=int, default=2)
        parser.add_argument("--price", default="480.00")
        parser.add_argument("--flight", choices=[c for c, _ in Trip.Flight.choices], default=Trip.Flight.OK)
        parser.add_argument("--approval", action="store_true", help="wait for a manager's approval first")

    def handle(self, *args, traveller: str, destination: str, nights: int, price: str, flight: str,
               approval: bool, **options) -> None:
        with transaction.atomic():  # the instance starts when the trip's row is committed
            trip = Trip.objects.create(traveller=traveller, destination=destination, nights=nights,
                                       price=Decimal(price), flight=flight, needs_approval=approval)
            durable_django.start(book_trip, trip.pk, instance_id=trip.instance_id, link=trip)
        self.stdout.write(f"trip #{trip.pk}: instance {trip.instance_id} started")
        if approval:
            self.stdout.write(f"approve it: durable_django.publish_event({trip.instance_id!r}, 'approval', "
                              "{'decision': 'approve'}), or cancel it in the admin")
