"""Observe mode: an agent's mode (a mirror of the policy's ``agents.<name>.mode``), a run's mode
and what enforcing would have done to it and to each of its tool calls, and the rollups' counts
of would-have stops.

Every existing agent and run is in enforce mode (no published policy names a mode yet).
"""

from django.db import migrations, models

MODES = [("enforce", "Enforce"), ("observe", "Observe")]


class Migration(migrations.Migration):
    dependencies = [("agents", "0016_observed_traces")]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="mode",
            field=models.CharField(choices=MODES, default="enforce", max_length=8),
        ),
        migrations.AddField(
            model_name="run",
            name="mode",
            field=models.CharField(choices=MODES, default="enforce", max_length=8),
        ),
        migrations.AddField(
            model_name="run",
            name="would_stop_reason",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="run",
            name="would_stop_detail",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="run",
            name="would_stop_at",
            field=models.CharField(blank=True, max_length=40),
        ),
        migrations.AddField(
            model_name="run",
            name="would_approvals",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="run",
            name="would_approval_tool",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="toolcall",
            name="would_decision",
            field=models.CharField(
                blank=True,
                choices=[
                    ("allow", "Allow"),
                    ("pending_approval", "Pending approval"),
                    ("stop", "Stop"),
                ],
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="toolcall",
            name="would_stop_reason",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="metricrollup",
            name="observed_runs",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="metricrollup",
            name="would_stop_reasons",
            field=models.JSONField(default=dict, help_text="{would-have stop reason: runs}"),
        ),
    ]
