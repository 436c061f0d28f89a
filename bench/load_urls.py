"""URLs of the load suite: the admin (timed) and durable_django's pages."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("durable/", include("durable_django.urls")),
]
