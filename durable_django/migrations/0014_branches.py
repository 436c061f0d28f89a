# Issue 14, parallel branches: one row per live branch of an instance (its own signed call stack and wait).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('durable_django', '0013_flow_control'),
    ]

    operations = [
        migrations.CreateModel(
            name='DurableBranch',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('path', models.CharField(max_length=200, verbose_name='path')),
                ('state', models.BinaryField(blank=True, null=True, verbose_name='signed state')),
                ('status', models.CharField(choices=[('pending', 'Pending'), ('running', 'Running'), ('paused', 'Paused'), ('completed', 'Completed'), ('failed', 'Failed'), ('cancelled', 'Cancelled'), ('suspended', 'Suspended')], default='running', max_length=16, verbose_name='status')),
                ('wait_kind', models.CharField(blank=True, default='', max_length=8, verbose_name='wait kind')),
                ('waiting_for', models.CharField(blank=True, default='', max_length=200, verbose_name='waiting for')),
                ('wake_at', models.DateTimeField(blank=True, null=True, verbose_name='wake at')),
                ('position', models.CharField(blank=True, default='', max_length=500, verbose_name='position')),
                ('steps', models.PositiveIntegerField(default=0, verbose_name='steps')),
                ('updated_at', models.DateTimeField(auto_now=True, verbose_name='updated at')),
                ('instance', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='branches', to='durable_django.durableinstance')),
            ],
            options={
                'verbose_name': 'durable branch',
                'verbose_name_plural': 'durable branches',
                'ordering': ('instance', 'path'),
                'constraints': [models.UniqueConstraint(fields=('instance', 'path'), name='durable_branch_path')],
            },
        ),
    ]
