"""URLs of the human-task pages and the publish endpoint; include them under any prefix::

    path("durable/", include("durable_django.urls")),   # namespace "durable"

The task pages are there only when ``durable_django.humantasks`` is installed.
"""

from django.urls import path

from . import metrics, views

app_name = "durable"

urlpatterns = [
    path("publish/<path:instance_id>", views.publish_event_view, name="publish"),
    # Prometheus metrics (404 unless DURABLE["TELEMETRY"]["metrics"]; see durable_django.metrics for access).
    path("metrics", metrics.metrics_view, name="metrics"),
]
if views.HUMAN_TASKS:
    urlpatterns += [
        path("tasks/", views.task_list, name="tasks"),
        path("tasks/answer/<path:instance_id>", views.task_answer, name="task-answer"),
    ]
