# TEMPORARY (branch dj-cancel): stands in for the lead's 0008 until core13 lands on main; dropped when merging.
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("durable_django", "0007_indexes_without_partial_indexes"),
    ]

    operations = [
        migrations.AddField("durableinstance", "cancel_requested_at",
                            models.DateTimeField(blank=True, null=True, verbose_name="cancel requested at")),
        migrations.AddField("durableinstance", "cancel_reason",
                            models.TextField(blank=True, default="", verbose_name="cancel reason")),
        migrations.AddField("durableinstance", "deadline",
                            models.DateTimeField(blank=True, null=True, verbose_name="deadline")),
        migrations.AlterField("durablehistory", "kind", models.CharField(
            choices=[("started", "Started"), ("resumed", "Resumed"), ("paused", "Paused"),
                     ("completed", "Completed"), ("failed", "Failed"), ("cancelled", "Cancelled"),
                     ("cancel_requested", "Cancel requested"), ("suspended", "Suspended"),
                     ("recovered", "Recovered from a dead worker"), ("event_published", "Event published"),
                     ("event_rejected", "Event rejected"), ("migrated", "Migrated to new code"),
                     ("operator", "Operator action")], max_length=20, verbose_name="kind")),
    ]
