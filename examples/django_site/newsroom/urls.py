from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("notify", views.notify),
    path("login", views.login_page),
    path("inbox", views.inbox),
    path("note", views.note),
    path("martd-auth", views.martd_auth),
]
