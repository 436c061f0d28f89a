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


@pytest.fixture
def durable_env(db: None) -> Iterator[DurableTestEnv]:
    """An active :class:`durable_django.testing.DurableTestEnv`: instances run inline, time is a fake clock.

    Gives the test database access (pytest-django's ``db``, named statically
    so that pytest-django sets the test database up). A transactional test
    (``@pytest.mark.django_db(transaction=True)`` or ``transactional_db``)
    stays transactional: pytest-django gives that precedence over ``db``.
    """
    from .testing import DurableTestEnv

    with DurableTestEnv() as env:
        yield env
