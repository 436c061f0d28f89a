"""The optional human-task app: a project without it still includes ``durable_django.urls`` and loads the commands."""

from __future__ import annotations

import subprocess
import sys

from tests.django.conftest import ROOT

SCRIPT = """
import sys, types
import django
from django.conf import settings

settings.configure(SECRET_KEY="x" * 32, DATABASES={}, ROOT_URLCONF="project_urls",
                   INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "durable_django"])
django.setup()
from django.core.management import load_command_class
from django.urls import NoReverseMatch, include, path, reverse

urls = types.ModuleType("project_urls")
urls.urlpatterns = [path("durable/", include("durable_django.urls"))]
sys.modules["project_urls"] = urls
print(reverse("durable:publish", args=["abc"]))
try:
    reverse("durable:tasks")
except NoReverseMatch:
    print("no task pages")
for name in ("durable_publish", "durable_resume", "durable_status"):
    load_command_class("durable_django", name)
print("commands loaded")
"""


def test_urls_and_commands_load_without_the_humantasks_app():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.split("\n")[:3] == ["/durable/publish/abc", "no task pages", "commands loaded"], out.stderr
