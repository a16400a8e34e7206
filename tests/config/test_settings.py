"""The settings modules: base runs unconfigured on the local PostgreSQL, production refuses to run without what it
must be given and passes Django's deployment checks."""
import os
import subprocess
import sys

from django.conf import settings


def run(code_or_args, **env):
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "SECRET_KEY", "ALLOWED_HOSTS")}
    args = [sys.executable, *code_or_args] if isinstance(code_or_args, list) else [sys.executable, "-c", code_or_args]
    return subprocess.run(args, cwd=settings.BASE_DIR, env={**base_env, **env}, capture_output=True, text=True,
                          timeout=120)


def test_base_defaults_to_the_local_postgresql_database_and_database_url_overrides_it():
    show = "import config.settings.base as s; d = s.DATABASES['default']; print(d['ENGINE'], d['USER'], d['NAME'])"
    assert run(show).stdout.split() == ["django.db.backends.postgresql", "hearth", "hearth"]
    assert run(show, DATABASE_URL="postgres://someone@db.example:5433/elsewhere").stdout.split() == [
        "django.db.backends.postgresql", "someone", "elsewhere"]


def test_production_refuses_to_start_without_a_secret_key():
    result = run("import config.settings.production", ALLOWED_HOSTS="hearth.example.com")
    assert result.returncode != 0 and "Set the SECRET_KEY environment variable" in result.stderr


def test_production_passes_the_deployment_checks_but_hsts_for_subdomains_and_preload():
    result = run(["manage.py", "check", "--deploy"], DJANGO_SETTINGS_MODULE="config.settings.production",
                 SECRET_KEY="k" * 20 + "-a-long-random-production-secret-" + "x" * 20,
                 ALLOWED_HOSTS="hearth.example.com", HEARTH_BASE_URL="https://hearth.example.com",
                 DATABASE_URL=os.environ["DATABASE_URL"])
    assert result.returncode == 0, result.stderr
    warnings = {line.split(")")[0].split("(")[-1] for line in result.stderr.splitlines() if "(security." in line}
    assert warnings == {"security.W005", "security.W021"}, result.stderr
    # dj-stripe's checks: nothing deprecated is configured, and the offline Stripe's W002 stays silenced.
    assert "djstripe" not in result.stderr and "deprecated" not in result.stderr, result.stderr


def test_production_keeps_a_csrf_middleware_though_djangos_check_for_it_is_silenced():
    show = ("import django; django.setup(); from django.conf import settings as s;"
            "from django.middleware.csrf import CsrfViewMiddleware as C; from django.utils.module_loading import"
            " import_string as i; print(sum(isinstance(i(m), type) and issubclass(i(m), C) for m in s.MIDDLEWARE))")
    result = run(show, DJANGO_SETTINGS_MODULE="config.settings.production", SECRET_KEY="k" * 50,
                 ALLOWED_HOSTS="hearth.example.com")
    assert result.stdout.split() == ["1"], result.stderr
