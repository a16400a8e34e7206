from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants"

    def ready(self):
        # django.contrib.admin is installed first: its ready() has registered every app's admin by now.
        from django.contrib import admin

        from tenants.admin import admin_actions_guard

        admin_actions_guard(admin.site)

        from core.metrics import collector_register
        from tenants.metrics import OutboxCollector

        collector_register("outbox", OutboxCollector())
