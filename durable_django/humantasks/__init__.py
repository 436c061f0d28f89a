"""Human tasks written as plain code: a wait says who may answer it and what its payload looks like.

In a durable program::

    decision = await wait_for_event(
        "manager_decision", timeout=3 * 86400,
        group="managers",                      # or user="alice" (username), permission="expenses.approve"
        form="expenses.forms.DecisionForm",    # or schema={"type": "object", "properties": {...}}
        title="Approve expense #12")

The keyword arguments are saved with the wait (``state["wait"]["meta"]``).
While the instance waits there, a :class:`~durable_django.humantasks.models.HumanTask`
row lists it for the users who may answer; the views and admin actions check
:func:`~durable_django.humantasks.assignment.check_answer` before publishing.
Add ``"durable_django.humantasks"`` to ``INSTALLED_APPS`` after ``"durable_django"``.
"""
