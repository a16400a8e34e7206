"""Settings of the Celery worker the billing crash test starts: the test settings plus the provider's URL."""
import os

from config.settings.test import *  # noqa: F403

STRIPE_API_BASE = os.environ["HEARTH_TEST_PROVIDER_URL"]
STRIPE_TIMEOUT = 5
