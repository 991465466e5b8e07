"""An approval is used once: the MCP endpoint claims an approved call before executing it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("approvals", "0001_initial"), ("agents", "0018_mcp_upstreams")]

    operations = [
        migrations.AddField(
            model_name="approvalrequest",
            name="consumed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
