"""Observed runs from OpenTelemetry traces (agents/telemetry): a run's source and trace id (one
run per trace of an agent), and the spans of observed runs, unique per run and span id so a
re-sent batch counts once. Every existing run came through the gateway.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("agents", "0015_step_gate")]

    operations = [
        migrations.AddField(
            model_name="run",
            name="source",
            field=models.CharField(
                choices=[("gateway", "Gateway"), ("otlp", "Observed (OTLP)")],
                default="gateway",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="run",
            name="trace_id",
            field=models.CharField(blank=True, max_length=32, null=True),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                condition=models.Q(("source", "otlp")),
                fields=["-started_at", "-id"],
                name="run_observed_list_idx",
            ),
        ),
        migrations.AddConstraint(
            model_name="run",
            constraint=models.UniqueConstraint(
                condition=models.Q(("trace_id__isnull", False)),
                fields=("agent", "trace_id"),
                name="run_trace_id_unique",
            ),
        ),
        migrations.CreateModel(
            name="ObservedSpan",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "run",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="spans",
                        to="agents.run",
                    ),
                ),
                ("span_id", models.CharField(max_length=16)),
                ("parent_span_id", models.CharField(blank=True, max_length=16)),
                ("name", models.CharField(max_length=300)),
                ("kind", models.CharField(max_length=16)),
                ("started_at", models.DateTimeField()),
                ("ended_at", models.DateTimeField()),
                ("status", models.CharField(default="unset", max_length=8)),
                ("status_message", models.TextField(blank=True)),
                ("attributes", models.JSONField(default=dict)),
                ("events", models.JSONField(blank=True, default=list)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("run", "span_id"), name="observedspan_run_span_unique"
                    )
                ],
            },
        ),
    ]
