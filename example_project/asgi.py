"""ASGI entry point: HTTP (Django) and websockets (live status of durable instances).

Run with ``daphne example_project.asgi:application`` or ``manage.py runserver``
(daphne is first in INSTALLED_APPS). With DEBUG on, static files are served
here too, so a bare ``daphne`` shows the admin and the status script.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

django_asgi_app = get_asgi_application()  # before importing consumers (they import models)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from durable_django.routing import websocket_urlpatterns as durable_ws  # noqa: E402
from example_project.expenses.routing import websocket_urlpatterns as expenses_ws  # noqa: E402

http_app = django_asgi_app
if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter({
    "http": http_app,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([*durable_ws, *expenses_ws]))),
})
