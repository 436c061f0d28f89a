"""Human tasks written as plain code: a wait says who may answer it and what its payload looks like.

In a durable program::

    decision = await wait_for_event(
        "manager_decision", timeout=3 * 86400,
        group="managers",                      # or user="alice" (username), permission="expenses.approve"
        form="expenses.forms.DecisionForm",    # or schema={"type": "object", "properties": {...}}
        title="Approve expense #12")

The keyword arguments are saved with the wait (the ``meta`` of :class:`durable.WaitInfo`).
While the instance waits there, a :class:`~durable_django.humantasks.models.HumanTask`
row lists it for the users who may answer; the views and admin actions check
:func:`~durable_django.humantasks.assignment.check_answer` before publishing,
and the wait checks the event it consumes again
(:func:`~durable_django.humantasks.assignment.judge_answer`: its publisher
may answer, its payload fits the form), so an event published ahead of time,
or by code without a user, never answers a human task; it is rejected with
the reason recorded. ``exclude_user="alice"`` keeps a user (even a superuser)
from answering, e.g. the one who submitted what is approved.
Add ``"durable_django.humantasks"`` to ``INSTALLED_APPS`` after ``"durable_django"``.
"""
