#!/usr/bin/env bash
# `make run`: prepare the embedded defaults (local PostgreSQL, Redis and Docker) and run every process.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var

say() { printf '\033[1m[hearth]\033[0m %s\n' "$*"; }

# DATABASE_URL set: that database is the operator's; unset: the local one, created here (config/settings/base.py).
database=(); [ -n "${DATABASE_URL:-}" ] || database=(postgres database)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  scripts/services.sh "${database[@]}" redis docker haproxy tinyproxy xmlsec1
else
  missing=()
  if [ ${#database[@]} -gt 0 ]; then
    pg_isready -q -h 127.0.0.1 2>/dev/null || missing+=("PostgreSQL on 127.0.0.1:5432 (apt-get install postgresql), or set DATABASE_URL")
  fi
  redis-cli ping >/dev/null 2>&1 || missing+=("Redis (apt-get install redis-server; redis-server --daemonize yes)")
  docker info >/dev/null 2>&1 || missing+=("the Docker engine (apt-get install docker.io; dockerd)")
  command -v haproxy >/dev/null || missing+=("HAProxy (apt-get install haproxy)")
  command -v tinyproxy >/dev/null || missing+=("tinyproxy, the workspaces' egress proxy (apt-get install tinyproxy)")
  command -v xmlsec1 >/dev/null || missing+=("xmlsec1, for SAML sign-in (apt-get install xmlsec1)")
  if [ ${#missing[@]} -gt 0 ]; then
    say "Hearth needs these running; as root on Debian/Ubuntu \`make run\` installs them itself:"
    printf '  - %s\n' "${missing[@]}"
    exit 1
  fi
  [ ${#database[@]} -eq 0 ] || scripts/services.sh database
fi

say "migrating the database (${DATABASE_URL:-postgres://hearth@127.0.0.1:5432/hearth}); the first time takes about a minute"
.venv/bin/python manage.py migrate --no-input -v0
.venv/bin/python manage.py collectstatic --no-input -v0
.venv/bin/python manage.py seed_demo
say "building any missing workspace image (the first start takes a few minutes; \`make images\` does it ahead)"
scripts/images/ensure.sh || say "could not build every workspace image; see above (\`make images\` to retry)"
say "portal http://localhost:${HEARTH_PORT:-8000}/   admin http://localhost:${HEARTH_PORT:-8000}/admin/   API http://localhost:${HEARTH_PORT:-8000}/api/docs/"
# Billing: the offline Stripe (the Procfile's `stripe`) unless STRIPE_SECRET_KEY names a real account.
processes=(web worker beat gateway events egress stripe)
if [ "$(DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-config.settings.base} .venv/bin/python -c 'import django; django.setup(); from django.conf import settings; print(settings.STRIPE_OFFLINE)' 2>/dev/null)" = "False" ]; then
  processes=(web worker beat gateway events egress)
  .venv/bin/python manage.py billing_stripe_setup
  say "Stripe: real account (STRIPE_SECRET_KEY); \`manage.py billing_sync_plans\` creates the plans' prices there"
else
  say "Stripe: offline emulator on ${STRIPE_API_HOST:-http://127.0.0.1:8420} (set STRIPE_SECRET_KEY for Stripe itself)"
fi
exec .venv/bin/honcho start -f Procfile "${processes[@]}"
