#!/usr/bin/env bash
# Installs (as root on Debian/Ubuntu) and starts the services Hearth needs: PostgreSQL, Redis, dockerd, HAProxy,
# tinyproxy (the workspaces' egress proxy: installed here, configured and run by `manage.py egress_proxy`), xmlsec1
# (pysaml2 signs and checks SAML messages with it: the SAML sign-in, sso/saml.py);
# `database` creates `make run`'s own role and database (hearth, the default DATABASE_URL of config/settings/base.py).
# Usage: scripts/services.sh [postgres] [database] [redis] [docker] [haproxy] [tinyproxy] [xmlsec1] [chromium]
#        [imagetools] (no argument: postgres redis docker haproxy tinyproxy xmlsec1)
set -euo pipefail

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(postgres redis docker haproxy tinyproxy xmlsec1)

log() { printf '[services] %s\n' "$*"; }

apt_updated=
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing: $* — install these packages (Debian/Ubuntu: apt-get install $*) and run again"
    exit 1
  fi
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1; }

start_postgres() {
  command -v pg_ctlcluster >/dev/null && [ -n "$(pg_version)" ] || apt_install postgresql
  local v; v=$(pg_version)
  if ! pg_lsclusters -h 2>/dev/null | grep -q "^$v main"; then
    pg_createcluster "$v" main >/dev/null
  fi
  local hba="/etc/postgresql/$v/main/pg_hba.conf"
  if ! grep -q "hearth: trust loopback" "$hba"; then
    # Local test and dev connections without a password; production uses DATABASE_URL with credentials.
    sed -i '1i # hearth: trust loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$v" main reload 2>/dev/null || true
  fi
  if ! pg_lsclusters -h | grep -q "^$v main .* online"; then
    log "starting PostgreSQL $v"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start
  fi
  # A role named after the OS user keeps DATABASE_URL short: postgres://postgres@127.0.0.1/hearth
  su postgres -c "psql -qtAc \"ALTER ROLE postgres WITH PASSWORD NULL\"" >/dev/null 2>&1 || true
}

# psql as PostgreSQL's superuser: through the socket as the postgres OS user when root, else over the trusted loopback.
psql_admin() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- psql -X -q -t -A "$@")
  else
    psql -X -q -t -A -h 127.0.0.1 -U postgres "$@"
  fi
}

create_database() {
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'hearth'")" ]; then
    log "creating PostgreSQL role hearth"
    psql_admin -c "CREATE ROLE hearth LOGIN"
  fi
  if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'hearth'")" ]; then
    log "creating PostgreSQL database hearth"
    psql_admin -c "CREATE DATABASE hearth OWNER hearth"
  fi
}

start_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no >/dev/null
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

start_docker() {
  command -v dockerd >/dev/null || apt_install docker.io
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p /var/log
    nohup dockerd >/var/log/hearth-dockerd.log 2>&1 &
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/hearth-dockerd.log"; exit 1; }
  fi
}

install_haproxy() { command -v haproxy >/dev/null || apt_install haproxy; }
# Debian's package also enables a tinyproxy service of its own on port 8888; Hearth runs its own processes instead.
install_tinyproxy() { command -v tinyproxy >/dev/null || apt_install tinyproxy; }
install_xmlsec1() { command -v xmlsec1 >/dev/null || apt_install xmlsec1; }
install_imagetools() {
  # What `make images` needs to build the workspace images offline (debootstrap, npm native builds, ripgrep).
  local need=()
  for pkg in debootstrap busybox-static ripgrep libkrb5-dev libxkbfile-dev libsecret-1-dev build-essential wrk; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
}
install_chromium() { command -v chromium >/dev/null || apt_install chromium chromium-driver fonts-liberation; }

for s in "${want[@]}"; do
  case "$s" in
    postgres) start_postgres ;;
    database) create_database ;;
    redis) start_redis ;;
    docker) start_docker ;;
    haproxy) install_haproxy ;;
    tinyproxy) install_tinyproxy ;;
    xmlsec1) install_xmlsec1 ;;
    chromium) install_chromium ;;
    imagetools) install_imagetools ;;
    *) log "unknown service $s"; exit 2 ;;
  esac
done
