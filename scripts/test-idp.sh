#!/usr/bin/env bash
# Installs the SSO tests' OpenID provider (npm oidc-provider, tests/sso/idp) with `npm ci`; a no-op when the
# installed tree is newer than package-lock.json. Needs Node 20 or later on PATH.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/tests/sso/idp"
if [ -f "$dir/node_modules/.package-lock.json" ] && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "[test-idp] npm is missing: install Node 20+ (the SSO tests run an OpenID provider on it)"; exit 1; }
echo "[test-idp] npm ci in tests/sso/idp"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
