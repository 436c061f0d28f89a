"""Forms of the expense pages. ``DecisionForm`` is also the payload contract of the approval waits."""

from __future__ import annotations

from django import forms

from .models import Expense


class ExpenseForm(forms.ModelForm):
    class Meta:
        model = Expense
        fields = ("description", "amount")

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("The amount must be positive.")
        return amount


class DecisionForm(forms.Form):
    """What an approver answers; the process receives ``{"decision": ..., "comment": ...}``."""

    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")], widget=forms.RadioSelect)
    comment = forms.CharField(required=False, max_length=500, widget=forms.Textarea(attrs={"rows": 2}))
