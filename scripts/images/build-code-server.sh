#!/usr/bin/env bash
# Builds hearth/code-server:<version> offline: debootstrap minbase rootfs + the host's Node 20 + code-server
# from npm, imported with `docker import`. The rootfs and the npm tree are cached under var/images/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
VERSION="${CODE_SERVER_VERSION:-4.100.3}"
IMAGE="${1:-hearth/code-server:$VERSION}"
SUITE=bookworm
# git/procps/less make the terminal useful; python3 serves the ai-builder image (derived from this one).
PACKAGES="ca-certificates,git,procps,less,python3-minimal,openssh-client"

need_root
need_cmd docker docker.io
need_cmd debootstrap debootstrap
need_cmd npm nodejs
if [ "${FORCE:-0}" != 1 ] && image_exists "$IMAGE"; then say "$IMAGE exists"; exit 0; fi

NODE="${HEARTH_NODE:-$(command -v node)}"
node_major=$("$NODE" -p 'process.versions.node.split(".")[0]')
[ "$node_major" = 20 ] || die "code-server $VERSION needs Node 20; $NODE is $("$NODE" --version) (set HEARTH_NODE)"

# 1. The Debian rootfs (about 40 s once), with the coder user (uid 1000).
BASE="$CACHE/rootfs/$SUITE-minbase"
if [ ! -e "$BASE/.hearth-done" ]; then
  MIRROR=$(debian_mirror)
  say "debootstrap --variant=minbase $SUITE from $MIRROR (about 40 s; cached afterwards)"
  rm -rf "$BASE"; mkdir -p "$(dirname "$BASE")"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$BASE" "$MIRROR" \
    | while read -r line; do case "$line" in I:\ Retrieving*|I:\ Validating*) ;; *) say "  $line";; esac; done
  [ -x "$BASE/bin/sh" ] || die "debootstrap failed"
  chroot "$BASE" sh -c 'groupadd -g 1000 coder && useradd -u 1000 -g 1000 -m -d /home/coder -s /bin/bash coder'
  rm -rf "$BASE"/var/cache/apt/archives/*.deb "$BASE"/var/lib/apt/lists/* "$BASE"/usr/share/doc/* "$BASE"/usr/share/man/*
  touch "$BASE/.hearth-done"
else
  say "rootfs cached: $BASE"
fi

# 2. code-server from npm (about 60 s once). @vscode/ripgrep's postinstall would download rg from GitHub:
#    give it Debian's rg as an already-downloaded tarball in its cache dir under TMPDIR.
NPMTREE="$CACHE/npm/code-server-$VERSION"
if [ ! -e "$NPMTREE/.hearth-done" ]; then
  need_cmd rg ripgrep
  for h in krb5.h X11/extensions/XKBfile.h libsecret-1/libsecret/secret.h; do
    [ -e "/usr/include/$h" ] || die "native build headers missing: apt-get install libkrb5-dev libxkbfile-dev libsecret-1-dev build-essential"
  done
  say "npm install code-server@$VERSION (about 60-120 s; cached afterwards)"
  rm -rf "$NPMTREE"; mkdir -p "$NPMTREE"
  RGTMP="$CACHE/npm/tmp"; rm -rf "$RGTMP"; mkdir -p "$RGTMP/rg/bin"
  cp "$(command -v rg)" "$RGTMP/rg/rg"
  RG_TGZ="ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"
  tar -C "$RGTMP/rg" -czf "$RGTMP/$RG_TGZ" rg
  for v in $(npm view @vscode/ripgrep versions --json 2>/dev/null | tr -d '[]", ' | tr '\n' ' '); do
    mkdir -p "$RGTMP/vscode-ripgrep-cache-$v"; ln -f "$RGTMP/$RG_TGZ" "$RGTMP/vscode-ripgrep-cache-$v/$RG_TGZ"
  done
  (cd "$NPMTREE" && echo '{"private":true}' >package.json && \
    TMPDIR="$RGTMP" npm_config_unsafe_perm=true npm_config_yes=true npm_config_update_notifier=false \
    npm install --no-audit --no-fund --loglevel=warn --foreground-scripts "code-server@$VERSION" 2>&1 \
    | grep --line-buffered -vE '^(npm (warn|notice) (deprecated|Unknown))|^\s*$' | sed -u 's/^/  npm: /' | cut -c1-160 >&2)
  entry="$NPMTREE/node_modules/code-server/out/node/entry.js"
  [ -e "$entry" ] || die "npm install did not produce $entry"
  [ -x "$NPMTREE/node_modules/code-server/lib/vscode/node_modules/@vscode/ripgrep/bin/rg" ] || die "ripgrep missing in the npm tree"
  rm -rf "$RGTMP"
  touch "$NPMTREE/.hearth-done"
else
  say "npm tree cached: $NPMTREE"
fi

# 3. The image-specific layer: Node, the entrypoint, default settings. `docker import` refuses duplicate
#    paths, so only files and directories the rootfs lacks are added.
OVERLAY="$CACHE/overlay/code-server"
rm -rf "$OVERLAY"; mkdir -p "$OVERLAY"/{usr/local/bin,etc/hearth,opt}
install -m 755 "$NODE" "$OVERLAY/usr/local/bin/node"
install -m 755 "$ROOT/images/code-server/hearth-entrypoint" "$OVERLAY/usr/local/bin/hearth-entrypoint"
install -m 644 "$ROOT/images/code-server/settings.json" "$OVERLAY/etc/hearth/settings.json"
ln -s /opt/code-server/node_modules/code-server/out/node/entry.js "$OVERLAY/usr/local/bin/code-server"
# The host's npm (it runs on this Node) so users can install packages into their home.
NPM_DIR=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
mkdir -p "$OVERLAY/usr/local/lib/node_modules"
cp -a "$NPM_DIR" "$OVERLAY/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$OVERLAY/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$OVERLAY/usr/local/bin/npx"
old_id=$(image_id "$IMAGE")
say "importing $IMAGE (tar of rootfs + Node + code-server, about 500 MB)"
tar --numeric-owner -c -C "$BASE" --exclude=./.hearth-done . \
    -C "$OVERLAY" ./usr/local/bin/node ./usr/local/bin/hearth-entrypoint ./usr/local/bin/code-server \
      ./usr/local/bin/npm ./usr/local/bin/npx ./usr/local/lib/node_modules ./etc/hearth \
    --transform 's,^\./node_modules,./opt/code-server/node_modules,' -C "$NPMTREE" ./node_modules \
  | docker import \
    --change 'USER 1000:1000' --change 'WORKDIR /home/coder' \
    --change 'ENV HOME=/home/coder LANG=C.UTF-8 SHELL=/bin/bash HEARTH_IDE_PORT=8080 NPM_CONFIG_PREFIX=/home/coder/.local PATH=/home/coder/.local/bin:/usr/local/bin:/usr/bin:/bin' \
    --change 'EXPOSE 8080' --change "LABEL hearth.image=code-server org.opencontainers.image.version=$VERSION" \
    --change 'ENTRYPOINT ["/usr/local/bin/hearth-entrypoint"]' - "$IMAGE" >/dev/null
say "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
drop_replaced "$old_id" "$IMAGE"
