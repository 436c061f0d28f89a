"""A wait with metadata reaches the backend's ``wait_for_answer`` (where a backend enforces it); backends written
against the two-argument ``wait_for_event`` contract keep working unchanged."""

import asyncio

import pytest

from durable import DurableBackend, PauseForEventException, make_durable, wait_for_event


@make_durable
async def with_meta():
    first = await wait_for_event("plain")
    second = await wait_for_event("task", group="finance", form="app.forms.F")
    return [first, second]


class Picky(DurableBackend):
    """Refuses a payload for a wait with metadata unless it is a dict: what durable_django does with a form."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    async def wait_for_answer(self, instance_id, event_name, meta):
        self.seen.append((event_name, meta))
        payload = await self.wait_for_event(instance_id, event_name)
        if not isinstance(payload, dict):
            raise PauseForEventException(event_name, instance_id=instance_id)
        return payload


def test_the_backend_sees_the_metadata_and_can_refuse():
    b = Picky()
    b.publish_event("i", "plain", "p")
    b.publish_event("i", "task", "not a dict")
    with pytest.raises(PauseForEventException):
        asyncio.run(with_meta(orchestration_backend=b, instance_id="i"))
    assert b.seen == [("task", {"group": "finance", "form": "app.forms.F"})]  # the plain wait did not come here
    b.publish_event("i", "task", {"ok": 1})
    assert asyncio.run(with_meta(orchestration_backend=b, instance_id="i")) == ["p", {"ok": 1}]


class TwoArgumentsOnly:
    """A duck-typed backend of the original contract (no wait_for_answer)."""

    def __init__(self) -> None:
        self.inner = DurableBackend()

    async def load_state(self, instance_id):
        return await self.inner.load_state(instance_id)

    async def save_state(self, instance_id, state):
        await self.inner.save_state(instance_id, state)

    async def wait_for_event(self, instance_id, event_name):
        return await self.inner.wait_for_event(instance_id, event_name)


def test_a_backend_without_the_hook_gets_wait_for_event():
    b = TwoArgumentsOnly()
    b.inner.publish_event("j", "plain", 1)
    b.inner.publish_event("j", "task", 2)
    assert asyncio.run(with_meta(orchestration_backend=b, instance_id="j")) == [1, 2]
