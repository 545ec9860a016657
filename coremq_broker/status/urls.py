"""The status URLs; the project includes them before ``admin/`` so the page sits under the admin."""

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/coremq/status/", admin.site.admin_view(views.status_page), name="coremq-status"),
    path("admin/coremq/status/<slug:action>/", views.status_action, name="coremq-status-action"),
    path("coremq/status.json", views.status_json, name="coremq-status-json"),
    path("metrics", views.metrics, name="coremq-metrics"),
]
