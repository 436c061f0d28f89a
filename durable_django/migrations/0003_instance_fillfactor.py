"""PostgreSQL: leave 30% of each page of the instance table free.

A checkpoint rewrites the row (the state blob) but no indexed column, so with
room on the page PostgreSQL makes it a HOT update: the new row version goes on
the same page and none of the table's indexes gets a new entry. Other
databases: nothing to do.
"""

from django.db import migrations

from durable_django.db import ops


def set_fillfactor(apps, schema_editor):
    ops(schema_editor.connection.alias).set_instance_fillfactor(schema_editor, 70)


def reset_fillfactor(apps, schema_editor):
    ops(schema_editor.connection.alias).set_instance_fillfactor(schema_editor, None)


class Migration(migrations.Migration):

    dependencies = [
        ("durable_django", "0002_edit_locals_permission"),
    ]

    operations = [
        migrations.RunPython(set_fillfactor, reset_fillfactor, elidable=False),
    ]
