"""Reserved for work in progress; see the module docstring once filled in."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("agents", "0017_observe_mode")]

    operations = []
