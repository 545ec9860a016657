"""URLs: the home page, the example publishing view, the broker's status and the admin."""

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("counter/increment/", views.counter_increment, name="counter-increment"),
    path("", include("coremq_broker.status.urls")),  # before admin/: the status page sits under it
    path("admin/", admin.site.urls),
]
