"""The broker in the Django admin: per-queue settings, permission rules, API tokens, and the status page link.

The status page itself is a view of :mod:`coremq_broker.status` under
``/admin/coremq/status/``; the admin index links to it (the project's
``templates/admin/index.html``) and so does the queue settings list. A saved
rule or a revoked token reaches the running broker within a second.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from .models import ApiToken, PermissionRule, QueueSetting


@admin.register(QueueSetting)
class QueueSettingAdmin(admin.ModelAdmin):
    list_display = ("pattern", "kind", "history_length", "max_message_size", "slow_consumer_policy", "durable",
                    "note", "updated")
    list_display_links = ("pattern",)
    search_fields = ("pattern", "note")
    list_filter = ("slow_consumer_policy", "durable")
    readonly_fields = ("updated",)
    fieldsets = (
        (None, {"fields": ("pattern", "note")}),
        ("Overrides (empty: settings.COREMQ)", {
            "fields": ("history_length", "max_message_size", "slow_consumer_policy", "durable"),
            "description": "A saved change reaches the running broker within a second; live queues "
                           "are re-resolved (a shorter history keeps the newest messages).",
        }),
        (None, {"fields": ("updated",)}),
    )
    change_list_template = "coremq/admin/queuesetting_change_list.html"

    @admin.display(description="kind")
    def kind(self, obj: QueueSetting) -> str:
        return "glob" if obj.is_glob else "name"


@admin.register(PermissionRule)
class PermissionRuleAdmin(admin.ModelAdmin):
    list_display = ("pattern", "kind", "publish", "subscribe", "history", "granted_to", "note", "updated")
    list_display_links = ("pattern",)
    search_fields = ("pattern", "note", "groups__name", "users__username")
    list_filter = ("publish", "subscribe", "history", "anonymous", "authenticated")
    filter_horizontal = ("groups", "users")
    readonly_fields = ("updated",)
    fieldsets = (
        (None, {
            "fields": ("pattern", "note"),
            "description": "For direct messages, use the pattern @connections: it matches connection ids and "
                           "their sub-addresses only, never a queue name (a glob like *-*-*-*-* would also match "
                           "billing.invoices-2026-12-01-eu).",
        }),
        ("Rights", {"fields": ("publish", "subscribe", "history")}),
        ("Granted to", {
            "fields": ("anonymous", "authenticated", "groups", "users"),
            "description": "Every rule whose pattern matches a queue counts, and a right is allowed when any "
                           "of them grants it; a queue that some rule matches is closed to everything its rules "
                           "do not grant. Queues that no rule matches follow COREMQ['DEFAULT_POLICY']. A saved "
                           "change reaches the running broker within a second: subscriptions it no longer "
                           "allows end.",
        }),
        (None, {"fields": ("updated",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[PermissionRule]:
        return super().get_queryset(request).prefetch_related("groups", "users")

    @admin.display(description="kind")
    def kind(self, obj: PermissionRule) -> str:
        return obj.kind

    @admin.display(description="granted to")
    def granted_to(self, obj: PermissionRule) -> str:
        grantees = (["anyone"] if obj.anonymous else []) + (["any user"] if obj.authenticated else [])
        grantees += [f"group {group.name}" for group in obj.groups.all()]
        grantees += [f"user {user.get_username()}" for user in obj.users.all()]
        return ", ".join(grantees) or "nobody"


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made here and shown once, after saving; afterwards only their prefix is known."""

    list_display = ("name", "user", "prefix", "state", "created", "expires", "last_used")
    list_filter = ("revoked", "expires")
    search_fields = ("name", "prefix", "user__username")
    actions = ["revoke"]
    raw_id_fields = ("user",)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return ["user", "name", "expires"]
        return ["user", "name", "prefix", "state", "created", "expires", "last_used", "revoked"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return []
        return ["user", "prefix", "state", "created", "last_used", "revoked"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        secret = None if change else obj.set_secret()
        super().save_model(request, obj, form, change)
        if secret is not None:
            messages.warning(request, format_html(
                "The token for {}: <code class=\"coremq-token\">{}</code> &mdash; copy it now: it is shown "
                "only this once and only its hash is kept.", obj.user.get_username(), secret))

    @admin.action(description="Revoke the selected tokens (their connections are closed)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = queryset.filter(revoked__isnull=True).update(revoked=timezone.now())
        self.message_user(request, f"Revoked {count} token(s); their connections close within a second.")

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # revoke first: a deleted token could not be told apart
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        # Only tokens that no longer log in: the broker closes a token's connections
        # when it sees it revoked or expired, which it cannot see of a deleted row.
        return super().has_delete_permission(request, obj) and (obj is None or not obj.is_valid())
