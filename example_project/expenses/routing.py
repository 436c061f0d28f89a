from django.urls import path

from .consumers import ExpenseStatusConsumer

websocket_urlpatterns = [path("ws/expenses/<int:pk>/", ExpenseStatusConsumer.as_asgi())]
