"""The MCP gateway (agents/mcp): the upstream tools the console has seen, pinned by a hash of
their definition, and the ``refused`` decision (``refusals: {on_refusal: refuse_call}``)."""

import django.utils.timezone
from django.db import migrations, models

DECISIONS = [
    ("allow", "Allow"),
    ("pending_approval", "Pending approval"),
    ("stop", "Stop"),
    ("refused", "Refused"),
]


class Migration(migrations.Migration):
    dependencies = [("agents", "0017_observe_mode")]

    operations = [
        migrations.CreateModel(
            name="McpToolSeen",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("server", models.CharField(max_length=64)),
                ("tool", models.CharField(max_length=200, unique=True)),
                ("definition", models.JSONField(default=dict)),
                ("definition_hash", models.CharField(max_length=64)),
                ("accepted_hash", models.CharField(max_length=64)),
                ("accepted_definition", models.JSONField(default=dict)),
                ("suggested_effect", models.CharField(max_length=8)),
                ("first_seen_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("changed_at", models.DateTimeField(blank=True, null=True)),
                ("accepted_by", models.CharField(blank=True, max_length=150)),
            ],
            options={"ordering": ["tool"]},
        ),
        migrations.AlterField(
            model_name="toolcall",
            name="decision",
            field=models.CharField(choices=DECISIONS, max_length=20),
        ),
        migrations.AlterField(
            model_name="toolcall",
            name="would_decision",
            field=models.CharField(blank=True, choices=DECISIONS, max_length=20),
        ),
    ]
