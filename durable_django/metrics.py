"""The ``/metrics`` view: the Prometheus metrics of :mod:`durable_django.telemetry`, for a scraper.

Served only when ``DURABLE["TELEMETRY"]["metrics"]`` is on (404 otherwise), and
only to a user with the ``durable_django.view_durableinstance`` permission or
a request carrying ``Authorization: Bearer <DURABLE["TELEMETRY"]["metrics_token"]>``:
the metrics name programs and volumes, which are not public. A project that
already exposes ``prometheus_client``'s registry (its own view, a sidecar port)
needs no view: the metrics are in that registry (``"registry"`` to choose one).
"""

from __future__ import annotations

import hmac

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from . import telemetry


def _allowed(request: HttpRequest) -> bool:
    token = telemetry.options().get("metrics_token")
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), token.encode()):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.has_perm("durable_django.view_durableinstance"))


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus' text exposition of the registry the app's metrics are in (the whole registry)."""
    exposed = telemetry.exposition()
    if exposed is None:
        raise Http404("metrics are off (DURABLE['TELEMETRY']['metrics'])")
    if not _allowed(request):
        response = HttpResponse("forbidden: needs durable_django.view_durableinstance or the metrics token\n",
                                status=403, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="durable metrics"'
        return response
    body, content_type = exposed
    return HttpResponse(body, content_type=content_type)
