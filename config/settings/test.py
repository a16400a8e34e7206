"""Test settings: PostgreSQL (DATABASE_URL), fast hashing, mail to a real SMTP server the tests start."""
import os
import secrets
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/hearth")
os.environ.setdefault("HEARTH_INSTANCE", "hearth-test")
# Each run counts its own rate limits (allauth's, in Redis) and never meets the last run's; the processes the tests
# start inherit HEARTH_TEST_RUN and share the run's counts, as a deployment's web processes do. The same for the
# metrics' multiprocess directory (removed at the end of the run: tests/conftest.py).
os.environ.setdefault("HEARTH_TEST_RUN", secrets.token_hex(4))
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(),
                                                               f"hearth-test-metrics-{os.environ['HEARTH_TEST_RUN']}"))

from config.settings.base import *  # noqa: E402,F403
from config.settings.base import BASE_DIR, CACHES, HEARTH_INSTANCE, STATIC_ROOT, VAR_DIR, env  # noqa: E402

CACHES = {"default": {**CACHES["default"],
                      "KEY_PREFIX": f"{HEARTH_INSTANCE}:cache:{os.environ['HEARTH_TEST_RUN']}"}}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STORAGE_ROOT = VAR_DIR / "test-storage"
EXPORT_ROOT = VAR_DIR / "test-exports"
TEST_ARTIFACTS = BASE_DIR / env.str("TEST_ARTIFACTS", default="var/artifacts")
# WhiteNoise warns on every request when STATIC_ROOT is missing; tests serve static files through the finders.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
