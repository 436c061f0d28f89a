# Issue 15: progress reported from inside a process (durable.set_status) and the values it publishes.

import django.core.serializers.json
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('durable_django', '0011_schedules'),
    ]

    operations = [
        migrations.AddField(
            model_name='durableinstance',
            name='progress',
            field=models.JSONField(blank=True, encoder=django.core.serializers.json.DjangoJSONEncoder, help_text='The custom status the program reported last (durable.set_status).', null=True, verbose_name='progress'),
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='published',
            field=models.JSONField(blank=True, encoder=django.core.serializers.json.DjangoJSONEncoder, help_text='Values the program published for others to wait on (durable.publish).', null=True, verbose_name='published values'),
        ),
    ]
