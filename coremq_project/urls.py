"""URLs: the home page, the example publishing view and the admin."""

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("counter/increment/", views.counter_increment, name="counter-increment"),
    path("admin/", admin.site.urls),
]
