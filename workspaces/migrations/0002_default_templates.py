"""The three default templates and the local node. Staff edit them in admin afterwards; this runs once.

The image names here are the one place that names the images `make images` builds (scripts/images/).
"""
from django.db import migrations

CODE_SERVER_VERSION = "4.100.3"

DEFAULT_TEMPLATES = [
    # slug, name, image, description
    ("code-server", "VS Code (code-server)", f"hearth/code-server:{CODE_SERVER_VERSION}",
     "VS Code in the browser with a terminal."),
    ("ai-builder", "AI builder", f"hearth/ai-builder:{CODE_SERVER_VERSION}",
     "code-server with Python, notebooks and AI tooling."),
    ("web-app-builder", "Web app builder", f"hearth/web-app-builder:{CODE_SERVER_VERSION}",
     "code-server with Node.js and a live preview for web apps."),
]


def load(apps, schema_editor):
    # The warm pool's size is the field's default (2): tests' seed data loads this with today's model, where the
    # field is `warm_min` (0009), so it is not named here.
    WorkspaceTemplate = apps.get_model("workspaces", "WorkspaceTemplate")
    for slug, name, image, description in DEFAULT_TEMPLATES:
        WorkspaceTemplate.objects.get_or_create(
            slug=slug,
            defaults=dict(name=name, image=image, description=description, internal_port=8080, cpus=1,
                          memory_mb=1024, pids_limit=512, idle_timeout_minutes=30, max_containers=50),
        )


class Migration(migrations.Migration):
    dependencies = [("workspaces", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
