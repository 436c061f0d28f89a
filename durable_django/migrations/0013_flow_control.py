# Issue 15, flow control: slots, rate windows, and the priority, queue and limit columns of an instance.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('durable_django', '0012_progress'),
    ]

    operations = [
        migrations.CreateModel(
            name='DurableRateWindow',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('limit_key', models.CharField(max_length=255, verbose_name='limit')),
                ('window', models.BigIntegerField(verbose_name='window')),
                ('count', models.PositiveIntegerField(default=0, verbose_name='count')),
            ],
            options={
                'verbose_name': 'rate limit window',
                'verbose_name_plural': 'rate limit windows',
            },
        ),
        migrations.CreateModel(
            name='DurableSlot',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('limit_key', models.CharField(max_length=255, verbose_name='limit')),
                ('slot', models.PositiveIntegerField(verbose_name='slot')),
                ('holder', models.CharField(blank=True, default='', max_length=200, verbose_name='held by')),
                ('version', models.PositiveIntegerField(default=0, verbose_name='version')),
                ('taken_at', models.DateTimeField(blank=True, null=True, verbose_name='taken at')),
            ],
            options={
                'verbose_name': 'concurrency slot',
                'verbose_name_plural': 'concurrency slots',
            },
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='flow_key',
            field=models.CharField(blank=True, default='', help_text="The per-key concurrency or rate limit's key, from the start arguments.", max_length=200, verbose_name='limit key'),
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='flow_waiting',
            field=models.CharField(blank=True, default='', help_text='The limit it waits for (a concurrency slot or the rate).', max_length=255, verbose_name='waits for a slot'),
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='priority',
            field=models.SmallIntegerField(default=0, help_text='Higher runs first where a worker picks among many.', verbose_name='priority'),
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='queue',
            field=models.CharField(blank=True, default='', help_text="Celery queue of this instance's wake-ups (empty: its program's).", max_length=100, verbose_name='queue'),
        ),
        migrations.AddIndex(
            model_name='durableinstance',
            index=models.Index(fields=['flow_waiting', '-priority', 'created_at'], name='durable_inst_flow_wait'),
        ),
        migrations.AddConstraint(
            model_name='durableratewindow',
            constraint=models.UniqueConstraint(fields=('limit_key', 'window'), name='durable_rate_window'),
        ),
        migrations.AddConstraint(
            model_name='durableslot',
            constraint=models.UniqueConstraint(fields=('limit_key', 'slot'), name='durable_slot_key'),
        ),
    ]
