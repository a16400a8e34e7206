from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "workspaces"
    verbose_name = "Workspaces"

    def ready(self):
        # Registers the suspension hook and the offboarding exporter (tenants.offboarding), and the
        # dashboard's "workspaces" card (tenants.portal).
        from workspaces import services, views  # noqa: F401
