"""A form module that must never be imported by the task pages: a test writes its path into ``HumanTask.form``
(the unsigned column) and checks that it is not in ``sys.modules`` afterwards (importing runs a module's code)."""

from django import forms


class TrapForm(forms.Form):
    decision = forms.CharField()
