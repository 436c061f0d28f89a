"""One task row per waiting branch: the rows get their own key, the instance becomes a foreign key.

Task rows are derived data (rebuilt from each instance's signed state), so the
table is recreated rather than altered (a primary key change that every
database would do differently); the repair cursor is reset, so the next sweep
re-reads every waiting instance and rebuilds the rows (or call
``durable_django.humantasks.sync.sync_all()`` at once).
"""

import django.core.serializers.json
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def reset_repair_cursor(apps, schema_editor):
    apps.get_model("durable_humantasks", "RepairCursor").objects.using(schema_editor.connection.alias).all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ('auth', '0012_alter_user_first_name_max_length'),
        ('durable_django', '0001_initial'),
        ('durable_humantasks', '0004_exclude_user'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.DeleteModel(name='HumanTask'),
        migrations.CreateModel(
            name='HumanTask',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('branch', models.CharField(blank=True, default='', max_length=200, verbose_name='branch')),
                ('event', models.CharField(max_length=200, verbose_name='event')),
                ('title', models.CharField(blank=True, default='', max_length=255, verbose_name='title')),
                ('permission', models.CharField(blank=True, default='', help_text='app_label.codename', max_length=255, verbose_name='permission')),
                ('exclude_user', models.CharField(blank=True, default='', help_text='Username that may not answer it (e.g. who submitted it).', max_length=150, verbose_name='never answered by')),
                ('form', models.CharField(blank=True, default='', max_length=255, verbose_name='form')),
                ('schema', models.JSONField(blank=True, encoder=django.core.serializers.json.DjangoJSONEncoder, null=True, verbose_name='schema')),
                ('due_at', models.DateTimeField(blank=True, null=True, verbose_name='due at')),
                ('instance_version', models.PositiveIntegerField(default=0, verbose_name='instance version')),
                ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='created at')),
                ('assignee_group', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='auth.group', verbose_name='group')),
                ('assignee_user', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='user')),
                ('instance', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='human_tasks', to='durable_django.durableinstance', verbose_name='instance')),
            ],
            options={
                'verbose_name': 'human task',
                'verbose_name_plural': 'human tasks',
                'ordering': ('created_at',),
                'indexes': [models.Index(fields=['permission'], name='durable_task_perm')],
                'constraints': [models.UniqueConstraint(fields=('instance', 'branch'), name='durable_task_one_per_branch')],
            },
        ),
        migrations.RunPython(reset_repair_cursor, migrations.RunPython.noop),
    ]
