#!/usr/bin/env bash
# The offline Stripe of `make run` (no STRIPE_SECRET_KEY): the emulator, then Hearth's webhook target and the plans'
# prices registered with it. The emulator keeps webhook targets in memory only, so this runs at every start.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
.venv/bin/python -m billing.stripe_emulator --port "${STRIPE_EMULATOR_PORT:-8420}" --state var/stripe-emulator.pickle &
emulator=$!
trap 'kill "$emulator" 2>/dev/null || true' EXIT
.venv/bin/python manage.py billing_stripe_setup --wait 30
wait "$emulator"
