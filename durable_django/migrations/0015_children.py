# Issue 14, child instances: the parent link and the parent-close policy of an instance.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('durable_django', '0014_branches'),
    ]

    operations = [
        migrations.AddField(
            model_name='durableinstance',
            name='parent',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True,
                                    on_delete=django.db.models.deletion.SET_NULL, related_name='children',
                                    to='durable_django.durableinstance', verbose_name='parent instance'),
        ),
        migrations.AddField(
            model_name='durableinstance',
            name='on_parent_close',
            field=models.CharField(blank=True, default='', help_text='cancel, abandon or wait (child instances only).',
                                   max_length=8, verbose_name='when the parent ends'),
        ),
        migrations.AddIndex(
            model_name='durableinstance',
            index=models.Index(fields=['parent', 'status'], name='durable_inst_parent_status'),
        ),
    ]
