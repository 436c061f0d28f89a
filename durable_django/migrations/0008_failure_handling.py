# Issue 13: cancellation requests, deadlines, kept checkpoints (forks), their history kinds and permission.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('durable_django', '0007_indexes_without_partial_indexes'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='durableinstance',
            options={'ordering': ('-created_at',), 'permissions': [('resume_durableinstance', 'Can resume durable instances'), ('cancel_durableinstance', 'Can cancel durable instances'), ('publish_durableevent', 'Can publish events to durable instances'), ('edit_locals_durableinstance', 'Can edit the locals of paused durable instances'), ('fork_durableinstance', 'Can fork durable instances from a kept checkpoint')], 'verbose_name': 'durable instance', 'verbose_name_plural': 'durable instances'},
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='cancel_reason',
            field=models.TextField(blank=True, default='', verbose_name='cancel reason'),
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='cancel_requested_at',
            field=models.DateTimeField(blank=True, help_text='A cancellation was raised in the program, which is cleaning up; a second cancel forces it.', null=True, verbose_name='cancel requested at'),
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='deadline',
            field=models.DateTimeField(blank=True, help_text='When DeadlineExceeded is raised in the program.', null=True, verbose_name='deadline'),
        ),
        migrations.AlterField(
            model_name='durablehistory',
            name='kind',
            field=models.CharField(choices=[('started', 'Started'), ('resumed', 'Resumed'), ('paused', 'Paused'), ('completed', 'Completed'), ('failed', 'Failed'), ('cancelled', 'Cancelled'), ('suspended', 'Suspended'), ('recovered', 'Recovered from a dead worker'), ('event_published', 'Event published'), ('event_rejected', 'Event rejected'), ('migrated', 'Migrated to new code'), ('operator', 'Operator action'), ('retrying', 'Step retry scheduled'), ('cancel_requested', 'Cancellation requested'), ('forked', 'Forked')], max_length=20, verbose_name='kind'),
        ),
        migrations.CreateModel(
            name='DurableCheckpoint',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('step', models.PositiveIntegerField(verbose_name='step')),
                ('status', models.CharField(choices=[('pending', 'Pending'), ('running', 'Running'), ('paused', 'Paused'), ('completed', 'Completed'), ('failed', 'Failed'), ('cancelled', 'Cancelled'), ('suspended', 'Suspended')], max_length=16, verbose_name='status')),
                ('position', models.CharField(blank=True, default='', max_length=500, verbose_name='position')),
                ('state', models.BinaryField(verbose_name='signed state')),
                ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='saved at')),
                ('instance', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='checkpoints', to='durable_django.durableinstance')),
            ],
            options={
                'verbose_name': 'durable checkpoint',
                'verbose_name_plural': 'durable checkpoints',
                'ordering': ('instance', 'step'),
                'constraints': [models.UniqueConstraint(fields=('instance', 'step'), name='durable_checkpoint_step')],
            },
        ),
    ]
