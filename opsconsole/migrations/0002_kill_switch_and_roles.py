from django.db import migrations


def create(apps, schema_editor):
    apps.get_model("opsconsole", "KillSwitch").objects.get_or_create(pk=1, defaults={"mode": "off"})
    Group = apps.get_model("auth", "Group")
    for name in ("oncall", "reviewer", "admin"):
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [
        ("opsconsole", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
