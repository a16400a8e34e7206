"""The real migrations, from an empty PostgreSQL database, as `make run` applies them."""
import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.conf import settings

pytestmark = pytest.mark.slow

# The five default plans as the issue states them (price cents, daily min, monthly h, storage MB, seats).
EXPECTED = {
    "free": (0, 30, None, 100, 1),
    "starter": (500, None, 5, 1024, 1),
    "pro": (1000, None, 20, 5120, 1),
    "team": (2500, None, 100, 10240, 3),
    "enterprise": (None, None, None, None, None),
}


@pytest.fixture
def fresh_database():
    db = settings.DATABASES["default"]
    name = f"hearth_migrate_{uuid.uuid4().hex[:10]}"
    server = dict(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
                  password=db["PASSWORD"] or None)
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgres://{db['USER']}@{server['host']}:{server['port']}/{name}"
    try:
        yield url, lambda: psycopg.connect(dbname=name, **server)
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(url, *args):
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=600)


def test_migrations_from_zero_load_the_default_plans(fresh_database):
    url, connect = fresh_database
    result = manage(url, "migrate", "--no-input")
    assert result.returncode == 0, result.stderr[-3000:]
    with connect() as conn:
        rows = conn.execute(
            "SELECT slug, monthly_price_cents, daily_minutes, monthly_hours, storage_mb, seats, public, currency "
            "FROM tenants_plan ORDER BY sort_order").fetchall()
    assert [r[0] for r in rows] == list(EXPECTED)
    for slug, price, daily, hours, storage, seats, public, currency in rows:
        assert (price, daily, hours, storage, seats) == EXPECTED[slug], slug
        assert public == (slug != "enterprise") and currency == "usd"
    with connect() as conn:
        sso = [r[0] for r in conn.execute("SELECT slug FROM tenants_plan WHERE sso_allowed ORDER BY slug")]
    assert sso == ["enterprise", "team"]  # single sign-on: Team and Enterprise by default (tenants/0007_sso)
    # Nothing is left for makemigrations to write, and migrating again changes nothing.
    check = manage(url, "makemigrations", "--check", "--dry-run")
    assert check.returncode == 0, check.stdout + check.stderr
    again = manage(url, "migrate", "--no-input")
    assert again.returncode == 0 and "No migrations to apply" in again.stdout
