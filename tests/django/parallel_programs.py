"""Programs that wait for people in parallel branches (tests/django/test_humantasks_parallel.py), importable by
worker processes: the manager and finance asked at once, each branch's rejection raised in it."""

from __future__ import annotations

import durable
from durable import make_durable, wait_for_event

DECISION = {"type": "object", "required": ["decision"],
            "properties": {"decision": {"enum": ["approve", "reject"]}, "comment": {"type": "string", "maxLength": 50}}}


class Rejected(Exception):
    """Raised in a branch whose approver rejected: the gather cancels the other branch."""


async def approval(event: str, group: str, submitter: str) -> dict:
    decision = await wait_for_event(event, group=group, exclude_user=submitter, schema=DECISION,
                                    title=f"{event} for {submitter}")
    if decision["decision"] != "approve":
        raise Rejected(event)
    return decision


async def manager_approval(submitter: str) -> dict:
    return await approval("manager_decision", "managers", submitter)


async def finance_approval(submitter: str) -> dict:
    return await approval("finance_decision", "finance", submitter)


@make_durable
async def approve_in_parallel(submitter: str):
    try:
        decisions = await durable.gather(manager_approval(submitter), finance_approval(submitter))
    except Rejected as exc:
        await wait_for_event("acknowledged")  # still paused, on a wait that is no task: the other task closed
        return f"rejected at {exc}"
    return [d["comment"] for d in decisions]


@make_durable
async def three_approvals(submitter: str):
    return await durable.gather(manager_approval(submitter),
                                durable.gather(finance_approval(submitter),
                                               approval("legal_decision", "legal", submitter)))


async def two_manager_steps(submitter: str) -> list:
    first = await approval("manager_first", "managers", submitter)
    return [first, await approval("manager_second", "managers", submitter)]


@make_durable
async def steps_beside_finance(submitter: str):
    return await durable.gather(two_manager_steps(submitter), finance_approval(submitter))
