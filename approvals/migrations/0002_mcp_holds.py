"""Reserved for work in progress; see the module docstring once filled in."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("approvals", "0001_initial"), ("agents", "0018_mcp_upstreams")]

    operations = []
