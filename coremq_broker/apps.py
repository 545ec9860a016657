"""The Django app of the CoreMQ broker."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class CoreMQBrokerConfig(AppConfig):
    name = "coremq_broker"
    verbose_name = "CoreMQ broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .checks import check_access, check_durable_path, check_settings

        checks.register(check_settings, "coremq")
        checks.register(check_durable_path, "coremq")
        checks.register(check_access, "coremq", checks.Tags.security)
        from .cluster_checks import check_cluster
        checks.register(check_cluster, "coremq")

        from .auth.policy import access_senders
        from .models import QueueSetting
        from .snapshots import count_changes_of

        count_changes_of([QueueSetting, *access_senders()])
