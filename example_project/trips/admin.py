"""The trips in the admin: each with the rows its saga wrote (reservations, charges and refunds, the flight)
and a link to its durable instance (status, history, cancel)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from .models import CardTransaction, FlightBooking, HotelReservation, Trip


class _ReadOnly:
    """Rows written by the saga's steps are shown, never edited by hand."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class HotelInline(_ReadOnly, admin.TabularInline):
    model = HotelReservation
    fields = ("reference", "nights", "held_at", "released_at")
    readonly_fields = fields


class CardInline(_ReadOnly, admin.TabularInline):
    model = CardTransaction
    fk_name = "trip"
    fields = ("kind", "amount", "reference", "refund_of", "created_at")
    readonly_fields = fields


class FlightInline(_ReadOnly, admin.TabularInline):
    model = FlightBooking
    fields = ("reference", "attempt", "created_at")
    readonly_fields = fields


@admin.register(Trip)
class TripAdmin(admin.ModelAdmin):
    list_display = ("id", "traveller", "destination", "price", "flight", "needs_approval", "state", "created_at")
    list_filter = ("state", "flight", "needs_approval")
    search_fields = ("traveller", "destination")
    readonly_fields = ("state", "note", "process")
    inlines = (HotelInline, CardInline, FlightInline)

    @admin.display(description="Durable instance")
    def process(self, trip: Trip) -> str:
        try:
            url = reverse("admin:durable_django_durableinstance_change", args=[trip.instance_id])
        except NoReverseMatch:
            return trip.instance_id
        return format_html('<a href="{}">{}</a>', url, trip.instance_id)
