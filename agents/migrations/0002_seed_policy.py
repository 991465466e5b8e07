"""Policy version 1 is the seed's safe default config, loaded verbatim."""

from django.db import migrations


def create(apps, schema_editor):
    from agents.policy.document import SEED_POLICY_YAML, normalise, parse_yaml

    PolicyVersion = apps.get_model("agents", "PolicyVersion")
    if not PolicyVersion.objects.exists():
        PolicyVersion.objects.create(
            number=1,
            document=normalise(parse_yaml(SEED_POLICY_YAML)),
            author="system",
            reason="the seed's safe default config",
        )


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
