"""Formerly created ``durable_django.edit_locals_durableinstance``; now a no-op.

The permission is declared in ``DurableInstance.Meta.permissions`` (migration
``durable_django.0002_edit_locals_permission``) and created by Django like the
model's other permissions. This migration stays so that databases which
applied it keep a consistent migration graph; the permission it created there
is the same row Django expects (same content type and codename).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("durable_humantasks", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]
    operations = []
