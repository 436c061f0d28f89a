# The sweep finds the instances with a cancel requested (durable_django.cancellation) through this small partial index.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('durable_django', '0008_failure_handling'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='durableinstance',
            index=models.Index(condition=models.Q(('cancel_requested_at__isnull', False)), fields=['cancel_requested_at'], name='durable_inst_cancel_req'),
        ),
    ]
