from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "workspaces"
    verbose_name = "Workspaces"

    def ready(self):
        # Registers the suspension hook and the offboarding exporter (tenants.offboarding), the dashboard's
        # "workspaces" card (tenants.portal), the deployment check of the gateway's domain and the pool's and nodes'
        # scrape-time metrics (core.metrics).
        from core.metrics import collector_register
        from workspaces import metrics, services, views  # noqa: F401
        from workspaces.gateway import checks  # noqa: F401

        metrics.series_at_zero()
        collector_register("pool", metrics.PoolCollector())
        collector_register("nodes", metrics.NodeCollector())
