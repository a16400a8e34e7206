from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "workspaces"
    verbose_name = "Workspaces"

    def ready(self):
        # Registers the suspension hook and the offboarding exporter (tenants.offboarding), the dashboard's
        # "workspaces" card (tenants.portal) and the deployment check of the gateway's domain.
        from workspaces import services, views  # noqa: F401
        from workspaces.gateway import checks  # noqa: F401
