"""Run by tests/packaging/test_wheel.py with a fresh virtualenv's Python: the installed package, not a checkout.

Prints one JSON object (what was checked) on the last line; any failure raises.
"""

import importlib.resources
import json
import os
import sys
from pathlib import Path

CHECKOUT = os.environ["SMOKE_CHECKOUT"]
os.environ["DJANGO_SETTINGS_MODULE"] = "smoke_settings"

import django  # noqa: E402

django.setup()

import smoke_programs  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.contrib.staticfiles import finders  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402

import durable  # noqa: E402
import durable_django as dd  # noqa: E402

for module in (durable, dd):
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(Path(sys.prefix).resolve()), f"{module.__name__} imported from {where}"
assert not [p for p in sys.path if p and Path(p).resolve() == Path(CHECKOUT).resolve()], sys.path

call_command("check", fail_level="WARNING")
call_command("migrate", verbosity=0)
call_command("collectstatic", interactive=False, verbosity=0)
collected = Path(__file__).resolve().parent / "collected-static" / "durable_django" / "status.js"
assert collected.is_file(), "collectstatic did not find durable_django/status.js"
assert finders.find("durable_django/status.js"), "the static finders do not find status.js"

User.objects.create_superuser("operator", "operator@example.com", "pw")
inst = dd.start(smoke_programs.approval, 42, instance_id="smoke-1")
inst.refresh_from_db()
assert inst.status == "paused", inst.status

client = Client()
assert client.login(username="operator", password="pw")
pages = {
    "tasks": reverse("durable:tasks"),
    "task answer": reverse("durable:task-answer", args=[inst.pk]),
    "admin list": reverse("admin:durable_django_durableinstance_changelist"),
    "admin instance": reverse("admin:durable_django_durableinstance_change", args=[inst.pk]),
}
for name, url in pages.items():
    response = client.get(url)
    assert response.status_code == 200, f"{name} ({url}): {response.status_code}"
assert b"Approve the expense" in client.get(pages["tasks"]).content
assert b"durable_django/status.js" in client.get(pages["admin instance"]).content
script = client.get("/static/durable_django/status.js")
assert script.status_code == 200, f"status.js: {script.status_code}"
assert b"WebSocket" in b"".join(script.streaming_content)

typed = {name: importlib.resources.files(name).joinpath("py.typed").is_file() for name in ("durable", "durable_django")}
assert all(typed.values()), typed
print(json.dumps({"durable": durable.__file__, "pages": sorted(pages), "py.typed": typed}))
