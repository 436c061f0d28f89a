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

FIELDS = ("state", "arguments")
CHUNK = 500


def _convert(apps, schema_editor, convert) -> int:
    """Apply ``convert(blob, context) -> new blob or None`` to every blob; returns how many were changed."""
    from durable_django.signing import blob_context

    Instance = apps.get_model("durable_django", "DurableInstance")
    using = schema_editor.connection.alias
    rows = (Instance.objects.using(using).order_by("pk")
            .values_list("pk", "program", "version", *FIELDS))
    changed = 0
    last = None
    while True:
        page = rows.filter(pk__gt=last) if last is not None else rows
        chunk = list(page[:CHUNK])
        if not chunk:
            return changed
        for pk, program, version, *blobs in chunk:
            update = {}
            for field, blob in zip(FIELDS, blobs, strict=True):
                if blob is None:
                    continue
                new = convert(bytes(blob), blob_context(pk, program, field))
                if new is not None:
                    update[field] = new
            if update:
                changed += Instance.objects.using(using).filter(pk=pk, version=version).update(**update) and len(
                    update)
        last = chunk[-1][0]


def bind_signatures(apps, schema_editor) -> int:
    """Forward: unbound blobs that verify become bound blobs."""
    from durable_django.signing import rebind

    return _convert(apps, schema_editor, rebind)


def unbind_signatures(apps, schema_editor) -> int:
    """Backward (to 0004): bound blobs that verify for their row become unbound blobs the old code reads."""
    from durable_django.signing import unbind

    return _convert(apps, schema_editor, unbind)


class Migration(migrations.Migration):

    dependencies = [
        ("durable_django", "0004_object_id_index"),
    ]

    operations = [
        migrations.RunPython(bind_signatures, unbind_signatures, elidable=False),
    ]
