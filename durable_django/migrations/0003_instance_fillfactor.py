"""PostgreSQL: leave 30% of each page of the instance table free.

A checkpoint rewrites the row (the state blob) but no indexed column, so with
room on the page PostgreSQL makes it a HOT update: the new row version goes on
the same page and none of the table's indexes gets a new entry. Other
databases: nothing to do.
"""

from django.db import migrations

TABLE = "durable_django_durableinstance"


def set_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {schema_editor.quote_name(TABLE)} SET (fillfactor = 70)")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {schema_editor.quote_name(TABLE)} RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ("durable_django", "0002_edit_locals_permission"),
    ]

    operations = [
        migrations.RunPython(set_fillfactor, reset_fillfactor, elidable=False),
    ]
