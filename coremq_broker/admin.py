"""The broker in the Django admin: per-queue settings, and the link to the live status page.

The status page itself is a view of :mod:`coremq_broker.status` under
``/admin/coremq/status/``; the admin index links to it (the project's
``templates/admin/index.html``) and so does the queue settings list.
"""

from __future__ import annotations

from django.contrib import admin

from .models import QueueSetting


@admin.register(QueueSetting)
class QueueSettingAdmin(admin.ModelAdmin):
    list_display = ("pattern", "kind", "history_length", "max_message_size", "slow_consumer_policy", "note",
                    "updated")
    list_display_links = ("pattern",)
    search_fields = ("pattern", "note")
    list_filter = ("slow_consumer_policy",)
    readonly_fields = ("updated",)
    fieldsets = (
        (None, {"fields": ("pattern", "note")}),
        ("Overrides (empty: settings.COREMQ)", {
            "fields": ("history_length", "max_message_size", "slow_consumer_policy"),
            "description": "A saved change reaches the running broker within a second; live queues "
                           "are re-resolved (a shorter history keeps the newest messages).",
        }),
        (None, {"fields": ("updated",)}),
    )
    change_list_template = "coremq/admin/queuesetting_change_list.html"

    @admin.display(description="kind")
    def kind(self, obj: QueueSetting) -> str:
        return "glob" if obj.is_glob else "name"
