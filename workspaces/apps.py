from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "workspaces"
    verbose_name = "Workspaces"

    def ready(self):
        # Registers the suspension hook and the offboarding exporter (tenants.offboarding).
        from workspaces import services  # noqa: F401
