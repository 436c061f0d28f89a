"""Databases without partial indexes (MySQL, MariaDB): full indexes in place of the two partial ones.

Django leaves a conditional constraint or index out where the database cannot
express it. The unique key of an event's ``idempotency_key`` is what keeps
two concurrent publishes with the same key to one event, so there it becomes
a unique index on (instance, key), which allows any number of NULL keys; the
inbox's index of unconsumed events becomes one on (instance, name). Other
databases: nothing to do.
"""

from django.db import migrations

from durable_django.db import ops


def add(apps, schema_editor):
    ops(schema_editor.connection.alias).replace_partial_indexes(schema_editor, True)


def remove(apps, schema_editor):
    ops(schema_editor.connection.alias).replace_partial_indexes(schema_editor, False)


class Migration(migrations.Migration):

    dependencies = [
        ("durable_django", "0006_event_publisher"),
    ]

    operations = [
        migrations.RunPython(add, remove, elidable=False, atomic=False),  # DDL: MySQL refuses it in a transaction
    ]
