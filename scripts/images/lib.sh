# Shared helpers for the offline image builds (sourced, not run): paths, progress, the Debian mirror.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${HEARTH_IMAGE_CACHE:-$ROOT/var/images}"
INSTANCE="${HEARTH_INSTANCE:-hearth}"
mkdir -p "$CACHE"

T0=$(date +%s)
say() { printf '\033[1m[images %3ss]\033[0m %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { say "error: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "building images needs root (debootstrap, chroot, file ownership)"; }
need_cmd() { command -v "$1" >/dev/null || die "missing $1 — install it (Debian: apt-get install $2)"; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this host's apt already uses (deb822 or one-line format), so the build needs no other network.
debian_mirror() {
  local m
  m=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
      | grep -v -- '-security' | grep -oE 'https?://[^ ]*/debian/?' | head -1)
  echo "${HEARTH_DEBIAN_MIRROR:-${m:-http://deb.debian.org/debian}}"
}

# After a rebuild, drop the image the tag pointed at before, unless a container or a derived image still uses it.
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
drop_replaced() { [ -z "$1" ] || [ "$1" = "$(image_id "$2")" ] || docker rmi "$1" >/dev/null 2>&1 || true; }
