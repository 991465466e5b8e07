# Time waiting for people is kept apart from a run's active time (max_seconds counts only the
# latter): runs already waiting start their open wait at their last activity.
#
# Counters are bounded by their columns from now on; SQLite may hold values stored before that
# (two steps of 999999.999999 stored 1999999.999998, and every later read of the run failed).
# They are clamped to what the columns hold, in plain SQL, since Django cannot read them. On
# PostgreSQL such values were never stored, and these statements change nothing.

from django.db import migrations, models

_INT_MAX = 2**31 - 1
_USD_MAX = "999999.999999"

CLAMP_OVERFLOWED_COUNTERS = [
    f"UPDATE {table} SET {column} = {_USD_MAX} WHERE {column} > {_USD_MAX}"
    for table, column in (
        ("agents_run", "usd"),
        ("agents_run", "max_usd"),
        ("agents_toolcall", "cost_usd"),
        ("agents_toolcall", "result_usd"),
    )
] + [
    f"UPDATE agents_run SET {column} = {_INT_MAX} WHERE {column} > {_INT_MAX}"
    for column in ("steps", "tool_calls", "max_steps", "max_seconds", "max_tool_calls")
]


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0008_killswitch_moves_to_agents"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="waited_seconds",
            field=models.FloatField(db_default=0.0, default=0.0),
        ),
        migrations.AddField(
            model_name="run",
            name="waiting_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunSQL(
            "UPDATE agents_run SET waiting_since = last_activity_at "
            "WHERE status = 'waiting_approval' AND waiting_since IS NULL",
            migrations.RunSQL.noop,
        ),
        migrations.RunSQL(CLAMP_OVERFLOWED_COUNTERS, migrations.RunSQL.noop),
    ]
