"""Forms shared by the admin and the views; all input validation lives here."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.serializers.json import DjangoJSONEncoder

from .exceptions import InvalidInput
from .limits import EVENT_NAME_COLUMN, check_event_name, parse_json


def error_text(errors: Any, form: forms.BaseForm | None = None) -> str:
    """Form errors as one line a person reads: "Decision: Select a valid choice. ...; Comment: ...".

    ``errors`` is a ``ValidationError`` or a form's ``errors``; field names become the ``form``'s labels when
    it is given (pages), and stay names without it (JSON answers). Messages only: never Django's error codes
    (``invalid_choice``) or a dict's repr.
    """
    if isinstance(errors, forms.ValidationError):
        if not hasattr(errors, "error_dict"):
            return " ".join(errors.messages)
        errors = errors.message_dict
    parts = []
    for name, messages in errors.items():
        label = "" if name == "__all__" else str(form[name].label if form is not None and name in form.fields
                                                 else name)
        text = " ".join(str(m) for m in messages)
        parts.append(f"{label}: {text}" if label else text)
    return "; ".join(parts)


#: Longest JSON text accepted for a payload or a local's value.
MAX_JSON_CHARS = 100_000


class JSONTextField(forms.CharField):
    """A JSON document typed as text; ``cleaned_data`` holds the parsed value (empty text is ``None``)."""

    widget = forms.Textarea(attrs={"rows": 6, "cols": 80, "spellcheck": "false", "class": "vLargeTextField"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", MAX_JSON_CHARS)
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text or not text.strip():
            return None
        try:
            return parse_json(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}", code="invalid_json")

    def validate(self, value: Any) -> None:
        if value is None and self.required:
            raise forms.ValidationError(self.error_messages["required"], code="required")

    def run_validators(self, value: Any) -> None:
        return  # max_length was checked on the text

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return value
        return "" if value is None else json.dumps(value, indent=2, cls=DjangoJSONEncoder)

    def clean(self, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_JSON_CHARS:
            raise forms.ValidationError(f"At most {MAX_JSON_CHARS} characters of JSON.", code="max_length")
        return super().clean(value)


class PublishEventForm(forms.Form):
    """Event name and JSON payload of an answer a person publishes.

    No idempotency key: the server derives it, one answer per wait (see :mod:`durable_django.answers`).
    """

    event = forms.CharField(max_length=EVENT_NAME_COLUMN, help_text="Name the program waits for, e.g. approved.")
    payload = JSONTextField(help_text='JSON, e.g. {"approved": true}. Empty means null.')

    def clean_event(self) -> str:
        name = self.cleaned_data["event"].strip()
        if not name:
            raise forms.ValidationError("The event name may not be blank.")
        try:
            return check_event_name(name)
        except InvalidInput as exc:
            raise forms.ValidationError(str(exc), code="invalid") from None


class EditLocalForm(forms.Form):
    """A new value for one local of one frame of a paused instance (JSON-compatible values only)."""

    frame = forms.IntegerField(min_value=0, widget=forms.HiddenInput)
    name = forms.CharField(max_length=200, widget=forms.HiddenInput)
    value = JSONTextField(required=True, help_text="JSON: a string in quotes, a number, true/false, a list...")
    expected = forms.CharField(widget=forms.HiddenInput, required=False,
                               help_text="Instance version the operator saw (guards against concurrent runs).")
