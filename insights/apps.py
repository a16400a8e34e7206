"""Insights: the staff's business metrics (MRR, activity, usage per plan, margins, pool, revenue at risk) in admin."""
from django.apps import AppConfig


class InsightsConfig(AppConfig):
    name = "insights"
    verbose_name = "Insights"
