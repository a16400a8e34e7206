"""Test settings: PostgreSQL (DATABASE_URL), fast hashing, mail to a real SMTP server the tests start."""
import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/hearth")
os.environ.setdefault("HEARTH_INSTANCE", "hearth-test")

from config.settings.base import *  # noqa: E402,F403
from config.settings.base import BASE_DIR, STATIC_ROOT, VAR_DIR, env  # noqa: E402

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
