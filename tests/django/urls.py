"""The test URLconf: the example project's pages plus the async views of the async-API tests."""

from django.urls import include, path

from example_project.urls import urlpatterns as project_urlpatterns
from tests.django.testapp import async_views

async_patterns = [
    path("start/<str:instance_id>/", async_views.start),
    path("start-sync/<str:instance_id>/", async_views.start_sync),
    path("publish/<str:instance_id>/<str:name>/", async_views.publish),
    path("answer/<str:instance_id>/<str:name>/", async_views.answer),
    path("status/<str:instance_id>/", async_views.status),
    path("result/<str:instance_id>/", async_views.result),
    path("cancel/<str:instance_id>/", async_views.cancel),
    path("resume/<str:instance_id>/", async_views.resume),
]

urlpatterns = [path("test-async/", include(async_patterns)), *project_urlpatterns]
