"""The ``durable_env`` pytest fixture, registered through the ``pytest11`` entry point of the package.

Installed with ``durable-django``, so a project's tests get it without a
conftest. It needs pytest-django (the fixture asks for database access).
This module imports the Django app only when the fixture runs: pytest loads
plugins before Django is configured, and a run that never uses the fixture
(or has no Django at all) must not notice it. Disable it with
``-p no:durable_django``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import DurableTestEnv

#: Fixtures that already give the test database access (transactional ones included).
_DB_FIXTURES = ("db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "live_server")


@pytest.fixture
def durable_env(request: pytest.FixtureRequest) -> Iterator[DurableTestEnv]:
    """An active :class:`durable_django.testing.DurableTestEnv`: instances run inline, time is a fake clock.

    Gives the test database access (``db``) unless the test already asked for
    it, e.g. with ``@pytest.mark.django_db(transaction=True)``.
    """
    if not any(name in request.fixturenames for name in _DB_FIXTURES):
        request.getfixturevalue("db")
    from .testing import DurableTestEnv

    with DurableTestEnv() as env:
        yield env
