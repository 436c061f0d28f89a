# Issue 15: schedules (durable_django.schedules, docs/schedules.md).

import django.core.serializers.json
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('durable_django', '0010_telemetry'),
    ]

    operations = [
        migrations.CreateModel(
            name='DurableSchedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=100, unique=True, verbose_name='name')),
                ('program', models.CharField(help_text='Dotted path of the durable program.', max_length=255, verbose_name='program')),
                ('args', models.JSONField(blank=True, default=list, encoder=django.core.serializers.json.DjangoJSONEncoder, verbose_name='arguments')),
                ('kwargs', models.JSONField(blank=True, default=dict, encoder=django.core.serializers.json.DjangoJSONEncoder, verbose_name='keyword arguments')),
                ('cron', models.CharField(blank=True, default='', help_text='A cron expression, e.g. "0 9 * * MON" (5 fields, or 6 with seconds first).', max_length=100, verbose_name='cron')),
                ('interval_seconds', models.PositiveIntegerField(blank=True, help_text='Instead of cron: every this many seconds.', null=True, verbose_name='interval (seconds)')),
                ('timezone', models.CharField(default='UTC', help_text='IANA name the cron expression is read in, e.g. Europe/Paris.', max_length=64, verbose_name='time zone')),
                ('paused', models.BooleanField(default=False, verbose_name='paused')),
                ('overlap', models.CharField(choices=[('skip', 'Skip the tick'), ('allow', 'Start anyway'), ('cancel_previous', 'Cancel the previous instance')], default='skip', max_length=16, verbose_name='overlap')),
                ('catchup', models.CharField(choices=[('skip', 'Skip missed ticks'), ('latest', 'Run the latest missed tick once'), ('all', 'Run all missed ticks (up to max_catchup)')], default='skip', max_length=8, verbose_name='catch-up')),
                ('max_catchup', models.PositiveIntegerField(default=10, verbose_name='max catch-up ticks')),
                ('next_run_at', models.DateTimeField(blank=True, null=True, verbose_name='next run at')),
                ('last_run_at', models.DateTimeField(blank=True, null=True, verbose_name='last tick fired')),
                ('last_instance_id', models.CharField(blank=True, default='', max_length=200, verbose_name='last instance')),
                ('last_note', models.CharField(blank=True, default='', help_text='Why the last tick was skipped, or the error that paused it.', max_length=500, verbose_name='last note')),
                ('declared', models.BooleanField(default=False, editable=False, help_text="Declared by a decorator or DURABLE['SCHEDULES']: synced from code.", verbose_name='declared in code')),
                ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='created at')),
                ('updated_at', models.DateTimeField(auto_now=True, verbose_name='updated at')),
            ],
            options={
                'verbose_name': 'durable schedule',
                'verbose_name_plural': 'durable schedules',
                'ordering': ('name',),
                'indexes': [models.Index(fields=['paused', 'next_run_at'], name='durable_sched_due')],
            },
        ),
    ]
