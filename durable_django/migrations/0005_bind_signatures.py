"""Re-sign the blobs of existing rows bound to their instance, program and column (docs/security.md).

Before this migration a blob's signature covered only its bytes, so a signed
blob copied to another row or column, or a row whose ``program`` column was
changed, still verified. From now on the app accepts only bound blobs. Each
existing ``state`` and ``arguments`` blob is verified in the old format (with
the signing key or one of its fallbacks) and re-signed bound to the row it is
in, without being unpickled. A blob that does not verify is left as it is: the
instance is suspended as tampered when it next runs, as before. Stop the
workers while migrating (a worker of the old version would write unbound blobs).
"""

from django.db import migrations


def bind_signatures(apps, schema_editor) -> int:
    """Forward: unbound blobs that verify become bound blobs."""
    from durable_django.signing import convert_rows, rebind

    model = apps.get_model("durable_django", "DurableInstance")
    return convert_rows(model, schema_editor.connection.alias, rebind)


def unbind_signatures(apps, schema_editor) -> int:
    """Backward (to 0004): bound blobs that verify for their row become unbound blobs the old code reads."""
    from durable_django.signing import convert_rows, unbind

    model = apps.get_model("durable_django", "DurableInstance")
    return convert_rows(model, schema_editor.connection.alias, unbind)


def _forward(apps, schema_editor) -> None:
    bind_signatures(apps, schema_editor)


def _backward(apps, schema_editor) -> None:
    unbind_signatures(apps, schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ("durable_django", "0004_object_id_index"),
    ]

    operations = [
        migrations.RunPython(_forward, _backward, elidable=False),
    ]
