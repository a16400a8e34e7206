"""ASGI entry point."""
import os

from django.core.asgi import get_asgi_application

from core.telemetry import telemetry_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
telemetry_setup(process="web")  # before the middleware loads (config/wsgi.py)
application = get_asgi_application()
