"""tenants.templatetags.hearth: how prices and allowances read in the portal."""
import pytest

from tenants.models import Plan
from tenants.templatetags.hearth import allowance, money, plan_time, storage


@pytest.mark.parametrize(
    ("cents", "currency", "shown"),
    [(0, "usd", "$0"), (500, "usd", "$5"), (2550, "usd", "$25.50"), (50, "eur", "€0.50"),
     (123456, "usd", "$1,234.56"), (700, "chf", "7 CHF"), (None, "usd", "Custom")],
)
def test_money(cents, currency, shown):
    assert money(cents, currency) == shown


@pytest.mark.parametrize(("mb", "shown"), [(100, "100 MB"), (1024, "1 GB"), (5 * 1024, "5 GB"), (1536, "1,536 MB"),
                                          (None, "Unlimited")])
def test_storage(mb, shown):
    assert storage(mb) == shown


def test_allowance_and_plan_time():
    assert allowance(None) == "Unlimited" and allowance(3) == "3" and allowance(1000, "h") == "1,000 h"
    assert plan_time(Plan(daily_minutes=30)) == "30 minutes a day"
    assert plan_time(Plan(monthly_hours=20)) == "20 hours a month"
    assert plan_time(Plan()) == "Unlimited"
