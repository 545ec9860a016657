"""Rules about connection ids: the reserved pattern @connections (direct messages).

Earlier docs suggested the glob ``*-*-*-*-*`` for direct messages; it also
matches any queue name with four hyphens (``billing.invoices-2026-12-01-eu``),
so it granted far more than connection ids. Rules with exactly that pattern
become ``@connections`` rules; migrating back turns them into the glob again.
"""

from django.db import migrations, models

import coremq_broker.models

#: The glob the earlier docs suggested for direct messages, and what replaces it.
OLD_GLOB = "*-*-*-*-*"
CONNECTIONS = "@connections"


def glob_to_connections(apps, schema_editor):
    PermissionRule = apps.get_model("coremq_broker", "PermissionRule")
    PermissionRule.objects.filter(pattern=OLD_GLOB).update(pattern=CONNECTIONS)


def connections_to_glob(apps, schema_editor):
    PermissionRule = apps.get_model("coremq_broker", "PermissionRule")
    PermissionRule.objects.filter(pattern=CONNECTIONS).update(pattern=OLD_GLOB)


class Migration(migrations.Migration):

    dependencies = [
        ('coremq_broker', '0005_changecounter'),
    ]

    operations = [
        migrations.AlterField(
            model_name='permissionrule',
            name='pattern',
            field=models.CharField(help_text="A queue name (orders), a glob (orders.*, sensor-?, [ab]*), or @connections: the ids of connections and their sub-addresses only (direct messages; no queue name matches it). Every rule matching a queue counts: a right is granted when any of them grants it, and queues that no rule matches follow COREMQ['DEFAULT_POLICY'].", max_length=200, validators=[coremq_broker.models.validate_rule_pattern]),
        ),
        migrations.RunPython(glob_to_connections, connections_to_glob),
    ]
