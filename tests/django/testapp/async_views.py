"""Async views that drive instances through the async API (served under ASGI in tests/django/test_async_api.py).

Each answers JSON; an error of the API is answered as ``{"error": <exception class name>, "message": ...}``
with status 409, so a test over HTTP can check that it is the same exception the sync API raises.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

import durable_django as dd
from durable_django.views import apublish_for_user

from .durable_programs import two_events


def _error(exc: BaseException) -> JsonResponse:
    return JsonResponse({"error": type(exc).__name__, "message": str(exc)}, status=409)


def _body(request: HttpRequest) -> Any:
    return json.loads(request.body or b"null")


@csrf_exempt
async def start(request: HttpRequest, instance_id: str) -> JsonResponse:
    try:
        inst = await dd.astart(two_events, _body(request), instance_id=instance_id)
    except Exception as exc:
        return _error(exc)
    return JsonResponse({"instance_id": inst.instance_id, "status": inst.status}, status=201)


@csrf_exempt
async def start_sync(request: HttpRequest, instance_id: str) -> JsonResponse:
    """The mistake the async API exists for: the sync ``start`` in an async view."""
    try:
        dd.start(two_events, "x", instance_id=instance_id)
    except Exception as exc:
        return _error(exc)
    return JsonResponse({"instance_id": instance_id}, status=201)


@csrf_exempt
async def publish(request: HttpRequest, instance_id: str, name: str) -> JsonResponse:
    try:
        event = await dd.apublish_event(instance_id, name, _body(request))
    except Exception as exc:
        return _error(exc)
    return JsonResponse({"event_id": event.pk}, status=202)


@csrf_exempt
async def answer(request: HttpRequest, instance_id: str, name: str) -> JsonResponse:
    """Publish as the logged-in user, with every check of the task views."""
    status, body = await apublish_for_user(await request.auser(), instance_id, name, _body(request))
    return JsonResponse(body, status=status)


async def status(request: HttpRequest, instance_id: str) -> JsonResponse:
    try:
        inst = await dd.aget_instance(instance_id)
    except Exception as exc:
        return _error(exc)
    return JsonResponse({"status": inst.status, "waiting_for": inst.waiting_for})


async def result(request: HttpRequest, instance_id: str) -> JsonResponse:
    try:
        value = await dd.aresult(instance_id)
    except Exception as exc:
        return _error(exc)
    return JsonResponse({"result": value})


@csrf_exempt
async def cancel(request: HttpRequest, instance_id: str) -> JsonResponse:
    try:
        inst = await dd.acancel(instance_id, "no longer needed", actor="async-view")
    except Exception as exc:
        return _error(exc)
    return JsonResponse({"status": inst.status})


@csrf_exempt
async def resume(request: HttpRequest, instance_id: str) -> JsonResponse:
    try:
        outcome = await dd.aresume(instance_id, inline=request.GET.get("inline") == "1")
    except Exception as exc:
        return _error(exc)
    return JsonResponse({"outcome": outcome if isinstance(outcome, str) else outcome.status})
