"""Websocket URL patterns; include them in the project's ``URLRouter``::

    from durable_django.routing import websocket_urlpatterns

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    })
"""

from django.urls import path

from .consumers import InstanceListConsumer, InstanceStatusConsumer

websocket_urlpatterns = [
    path("ws/durable/instances/", InstanceListConsumer.as_asgi(), name="durable-ws-instances"),
    path("ws/durable/instances/<path:instance_id>/", InstanceStatusConsumer.as_asgi(), name="durable-ws-instance"),
]
