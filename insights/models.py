"""No tables: one unmanaged model gives the business pages their place in admin and their view permission."""
from django.db import models


class BusinessMetrics(models.Model):
    """Staff see the business pages with `insights.view_businessmetrics` (tenants.policy.can_see_business_metrics)."""

    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = verbose_name_plural = "business metrics"

    def __str__(self):
        return "business metrics"
