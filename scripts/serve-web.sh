#!/usr/bin/env bash
# The web process: portal, admin, REST API.
# Workers: 2 × cores + 1 processes (an open is CPU work; processes run it in parallel, threads would share a GIL);
# threads: a few per worker, so requests that wait (a cold open in line for a container, a slow mail server) don't
# hold the whole worker. bench/claim.py's concurrent scenario runs the same shape by default.
# config/gunicorn.py keeps the metrics of every worker adding up (core/metrics.py).
# Loopback by default (HEARTH_BIND=0.0.0.0 behind a reverse proxy): nothing else on the host's addresses.
set -euo pipefail
cores=$(nproc 2>/dev/null || echo 1)
exec .venv/bin/gunicorn config.wsgi:application -c config/gunicorn.py --bind "${HEARTH_BIND:-127.0.0.1}:${HEARTH_PORT:-8000}" \
  --workers "${WEB_WORKERS:-$((2 * cores + 1))}" --threads "${WEB_THREADS:-4}" \
  --access-logfile - --error-logfile - --log-level info
