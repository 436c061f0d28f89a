"""The Celery app. Broker: ``CELERY_BROKER_URL`` (e.g. redis://127.0.0.1:6379/0), or by default
kombu's filesystem transport under ``var/broker`` (no server needed)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
