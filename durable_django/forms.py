"""Forms shared by the admin and the views; all input validation lives here."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.serializers.json import DjangoJSONEncoder

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
            return json.loads(text)
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
    """Event name, JSON payload and optional idempotency key (what :func:`durable_django.publish_event` takes)."""

    event = forms.CharField(max_length=200, help_text="Name the program waits for, e.g. approved.")
    payload = JSONTextField(help_text='JSON, e.g. {"approved": true}. Empty means null.')
    idempotency_key = forms.CharField(max_length=255, required=False,
                                      help_text="Optional: publishing again with the same key adds nothing.")

    def clean_event(self) -> str:
        name = self.cleaned_data["event"].strip()
        if not name:
            raise forms.ValidationError("The event name may not be blank.")
        return name

    def clean_idempotency_key(self) -> str | None:
        return self.cleaned_data.get("idempotency_key") or None


class EditLocalForm(forms.Form):
    """A new value for one local of one frame of a paused instance (JSON-compatible values only)."""

    frame = forms.IntegerField(min_value=0, widget=forms.HiddenInput)
    name = forms.CharField(max_length=200, widget=forms.HiddenInput)
    value = JSONTextField(required=True, help_text="JSON: a string in quotes, a number, true/false, a list...")
    expected = forms.CharField(widget=forms.HiddenInput, required=False,
                               help_text="Instance version the operator saw (guards against concurrent runs).")
