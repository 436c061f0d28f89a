from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("expenses/<int:pk>/", views.expense_detail, name="expense"),
]
