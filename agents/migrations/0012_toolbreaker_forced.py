# A person may degrade a tool now: its breaker is held open until forced_until.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0011_agent_pause"),
    ]

    operations = [
        migrations.AddField(
            model_name="toolbreaker",
            name="forced_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="toolbreaker",
            name="forced_reason",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="toolbreaker",
            name="forced_by",
            field=models.CharField(blank=True, max_length=200),
        ),
    ]
