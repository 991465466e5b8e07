# The kill switch moved from opsconsole to the agents app (agents/policy/ owns it). The table
# keeps its name, so only Django's state moves: nothing is copied, nothing is dropped.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0007_drop_redundant_fk_indexes"),
        ("opsconsole", "0006_audit_no_delete_on_sqlite"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="KillSwitch",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        (
                            "mode",
                            models.CharField(
                                choices=[
                                    ("off", "Off"),
                                    ("disable_writes", "Disable writes"),
                                    ("disable_expensive", "Disable expensive tools"),
                                    ("stop_all", "Stop all"),
                                ],
                                default="off",
                                max_length=32,
                            ),
                        ),
                        ("reason", models.TextField(blank=True)),
                        ("set_by", models.CharField(blank=True, max_length=150)),
                        ("set_at", models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        "db_table": "opsconsole_killswitch",
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(
                                    (
                                        "mode__in",
                                        ["off", "disable_writes", "disable_expensive", "stop_all"],
                                    )
                                ),
                                name="killswitch_mode_valid",
                            )
                        ],
                    },
                ),
            ]
        )
    ]
