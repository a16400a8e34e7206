#!/usr/bin/env bash
# The web process: portal, admin, REST API.
set -euo pipefail
exec .venv/bin/gunicorn config.wsgi:application --bind "0.0.0.0:${HEARTH_PORT:-8000}" --workers 2 --threads 4 \
  --access-logfile - --error-logfile - --log-level info
