from django.apps import AppConfig


class TripsConfig(AppConfig):
    """The saga example: trip booking with compensations (see durable_programs.py)."""

    name = "example_project.trips"
    label = "trips"
    verbose_name = "Trips (saga example)"
    default_auto_field = "django.db.models.BigAutoField"
