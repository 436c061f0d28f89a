"""A minimal Django project that runs durable processes (Celery's documented Django layout)."""

from .celery import app as celery_app

__all__ = ["celery_app"]
