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


def test_production_without_preload_warns_only_about_preload_which_is_the_operators_choice():
    result = run(["manage.py", "check", "--deploy"], DJANGO_SETTINGS_MODULE="config.settings.production",
                 SECRET_KEY="k" * 20 + "-a-long-random-production-secret-" + "x" * 20,
                 ALLOWED_HOSTS="hearth.example.com", HEARTH_BASE_URL="https://hearth.example.com",
                 GATEWAY_HOST="workspaces-example.net", DATABASE_URL=os.environ["DATABASE_URL"])
    assert result.returncode == 0, result.stderr
    warnings = {line.split(")")[0].split("(")[-1] for line in result.stderr.splitlines() if "(security." in line}
    assert warnings == {"security.W021"}, result.stderr
    # dj-stripe's checks: nothing deprecated is configured, and the offline Stripe's W002 stays silenced.
    assert "djstripe" not in result.stderr and "deprecated" not in result.stderr, result.stderr


def test_production_keeps_a_csrf_middleware_though_djangos_check_for_it_is_silenced():
    show = ("import django; django.setup(); from django.conf import settings as s;"
            "from django.middleware.csrf import CsrfViewMiddleware as C; from django.utils.module_loading import"
            " import_string as i; print(sum(isinstance(i(m), type) and issubclass(i(m), C) for m in s.MIDDLEWARE))")
    result = run(show, DJANGO_SETTINGS_MODULE="config.settings.production", SECRET_KEY="k" * 50,
                 ALLOWED_HOSTS="hearth.example.com")
    assert result.stdout.split() == ["1"], result.stderr


# --- the secret key ------------------------------------------------------------------------------------------------

def test_without_a_secret_key_a_checkout_makes_its_own_private_one_once(tmp_path):
    from config.settings.base import _local_secret_key

    path = tmp_path / "secret_key"
    key = _local_secret_key(path)
    assert len(key) >= 50 and _local_secret_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert _local_secret_key(tmp_path / "elsewhere") != key
    # And the settings use this checkout's file when SECRET_KEY is unset.
    show = "import config.settings.base as s; print(s.SECRET_KEY == (s.VAR_DIR / 'secret_key').read_text().strip())"
    assert run(show).stdout.strip() == "True"


def test_the_published_development_key_is_refused_unless_debug():
    show = "import config.settings.base as s; print('started')"
    refused = run(show, SECRET_KEY="insecure-dev-only-set-SECRET_KEY-in-production")
    assert refused.returncode != 0 and "SECRET_KEY is a published development key" in refused.stderr
    assert "django-insecure" not in run(show, SECRET_KEY="django-insecure-abc", DEBUG="1").stderr
    assert run(show, SECRET_KEY="django-insecure-abc", DEBUG="1").stdout.strip() == "started"
    assert run(show, SECRET_KEY="django-insecure-abc").returncode != 0


# --- https, cookies and the workspaces' own domain ----------------------------------------------------------------

PRODUCTION = dict(DJANGO_SETTINGS_MODULE="config.settings.production",
                  SECRET_KEY="k" * 20 + "-a-long-random-production-secret-" + "x" * 20,
                  ALLOWED_HOSTS="hearth.example.com", HEARTH_BASE_URL="https://hearth.example.com",
                  GATEWAY_HOST="workspaces-example.net", GATEWAY_SCHEME="https", SECURE_HSTS_PRELOAD="true")


def test_the_documented_production_environment_passes_check_deploy_without_a_warning():
    result = run(["manage.py", "check", "--deploy"], DATABASE_URL=os.environ["DATABASE_URL"], **PRODUCTION)
    assert result.returncode == 0 and "System check identified no issues" in result.stdout, result.stderr


def test_workspaces_on_the_portals_own_domain_are_a_deployment_warning():
    result = run(["manage.py", "check", "--deploy"], DATABASE_URL=os.environ["DATABASE_URL"],
                 **{**PRODUCTION, "GATEWAY_HOST": "ws.example.com"})
    assert "hearth.W001" in result.stderr and "share the domain example.com" in result.stderr, result.stderr


def test_under_https_the_portals_cookies_are_host_only_and_secure():
    show = ("import django; django.setup(); from django.conf import settings as s; print(s.SESSION_COOKIE_NAME,"
            " s.CSRF_COOKIE_NAME, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_INCLUDE_SUBDOMAINS)")
    out = run(show, DATABASE_URL=os.environ["DATABASE_URL"], **PRODUCTION)
    assert out.stdout.split() == ["__Host-sessionid", "__Host-csrftoken", "True", "True", "True"], out.stderr
    plain = run(show, DATABASE_URL=os.environ["DATABASE_URL"],
                **{**PRODUCTION, "HEARTH_BASE_URL": "http://hearth.example.com"})
    assert plain.stdout.split() == ["sessionid", "csrftoken", "False", "False", "False"], plain.stderr
