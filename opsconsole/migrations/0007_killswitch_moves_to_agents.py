# The kill switch moved to the agents app (agents/migrations/0008): its table stays as it is.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("opsconsole", "0006_audit_no_delete_on_sqlite"),
        ("agents", "0008_killswitch_moves_to_agents"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="KillSwitch")],
        ),
    ]
