"""WSGI entry point."""
import os

from django.core.wsgi import get_wsgi_application

from core.telemetry import telemetry_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
# Before the application loads its middleware: Django's instrumentation adds its own (off unless OTEL_* ask).
telemetry_setup(process="web")
application = get_wsgi_application()

# Import every view now, then move everything loaded so far out of the cyclic garbage collector's sight
# (gc.freeze): a full collection otherwise walks all of Django's objects, about 100 ms of CPU here, in the
# middle of whichever request happens to trigger it (bench/claim.py's workers do the same).
import gc  # noqa: E402

from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018
gc.freeze()
