# Issue 15, telemetry: the trace context stored with an instance (written only with DURABLE["TELEMETRY"] on).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('durable_django', '0009_cancel_requested_index'),  # main's last; the lead puts it in the line
    ]

    operations = [
        migrations.CreateModel(
            name='DurableTrace',
            fields=[
                ('instance', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='trace', serialize=False, to='durable_django.durableinstance')),
                ('context', models.JSONField(blank=True, default=dict, verbose_name='trace context')),
                ('started_at', models.FloatField(blank=True, null=True, verbose_name='started at (epoch seconds)')),
                ('pending', models.JSONField(blank=True, default=list, verbose_name='publishes not yet seen by a run')),
            ],
            options={
                'verbose_name': 'durable trace context',
                'verbose_name_plural': 'durable trace contexts',
            },
        ),
    ]
