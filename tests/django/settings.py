"""Test settings: the example project plus a test app; SQLite file or DATABASE_URL (PostgreSQL).

The test database must be reachable from worker subprocesses, so SQLite uses
a file (not ``:memory:``) under a per-run directory, and workers receive the
test database name in ``DURABLE_TEST_DB_NAME``.
"""

import atexit
import os
import shutil
import tempfile
import uuid

if not os.environ.get("DURABLE_TEST_RUN_DIR"):
    # Created by the test session's process only (its worker subprocesses inherit it), removed when it exits.
    os.environ["DURABLE_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="durable-test-")
    atexit.register(shutil.rmtree, os.environ["DURABLE_TEST_RUN_DIR"], True)
# The filesystem broker (data, processed and control folders) lives there too: nothing is left in the repository.
os.environ.setdefault("DURABLE_VAR_DIR", os.environ["DURABLE_TEST_RUN_DIR"])
os.environ.setdefault("DURABLE_LEASE_SECONDS", "3")
os.environ.setdefault("DURABLE_BROKER_POLL", "0.1")
# One queue per test session: a shared Redis never hands us another run's messages.
os.environ.setdefault("DURABLE_TEST_QUEUE", f"durable-test-{uuid.uuid4().hex[:10]}")

if os.environ.get("DATABASE_URL", "").startswith("mysql"):
    # MySQL/MariaDB through PyMySQL (pure Python: mysqlclient needs a C toolchain and the client headers).
    import pymysql

    pymysql.install_as_MySQLdb()

from example_project.settings import *  # noqa: E402,F403
from example_project.settings import DATABASES, DURABLE, INSTALLED_APPS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "tests.django.testapp"]
# One test database per session: two runs on the same PostgreSQL server (CI jobs, developers) never collide
# on "test_<name>". The session's name is inherited by worker subprocesses through the environment.
os.environ.setdefault("DURABLE_TEST_SESSION", uuid.uuid4().hex[:10])
if not os.environ.get("DURABLE_TEST_DB_NAME"):
    if "sqlite" in DATABASES["default"]["ENGINE"]:
        DATABASES["default"]["TEST"] = {"NAME": os.path.join(os.environ["DURABLE_TEST_RUN_DIR"], "test.sqlite3")}
    else:
        DATABASES["default"]["TEST"] = {"NAME": f"test_durable_{os.environ['DURABLE_TEST_SESSION']}"}
# A second database ("other") for the tests of ``using`` and the routers (tests/django/test_db.py): created only
# when a test asks for it. Same engine and server as "default", its own test database.
_other = {**DATABASES["default"]}
if "sqlite" in _other["ENGINE"]:
    _other["NAME"] = os.path.join(os.environ["DURABLE_TEST_RUN_DIR"], "other.sqlite3")
    _other["TEST"] = {"NAME": os.path.join(os.environ["DURABLE_TEST_RUN_DIR"], "test-other.sqlite3")}
else:
    _other["TEST"] = {"NAME": f"test_durable_{os.environ['DURABLE_TEST_SESSION']}_other"}
DATABASES["other"] = _other
# The crash tests give their worker subprocesses a checkpoint hook (tests/django/test_crash_exhaustive.py).
DURABLE = {**DURABLE, "QUEUE": os.environ["DURABLE_TEST_QUEUE"], "ETA_MAX_SECONDS": 60,
           "ON_CHECKPOINT": os.environ.get("DURABLE_TEST_ON_CHECKPOINT") or None}
# The cancellation tests give their worker subprocesses (and scheduler) short cancel settings
# (tests/django/test_cancellation.py).
for _name in ("CANCEL_CHECK_SECONDS", "CANCEL_GRACE_SECONDS"):
    if os.environ.get(f"DURABLE_TEST_{_name}"):
        DURABLE[_name] = float(os.environ[f"DURABLE_TEST_{_name}"])
# No remote control: workers then leave no pidbox bindings in a shared Redis (nothing in the tests uses it).
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The example project's pages plus the async views of tests/django/test_async_api.py (also under daphne).
ROOT_URLCONF = "tests.django.urls"
# The telemetry tests' worker subprocesses: spans on, exported to a file (tests/django/test_telemetry.py).
if os.environ.get("DURABLE_TEST_OTEL_FILE"):
    from tests.django.otel_file import install as _install_otel  # noqa: E402

    _install_otel(os.environ["DURABLE_TEST_OTEL_FILE"])
    DURABLE = {**DURABLE, "TELEMETRY": {"traces": True, "logs": True}}
