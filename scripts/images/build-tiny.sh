#!/usr/bin/env bash
# Builds hearth/tiny:1 offline in about a second: a busybox-static rootfs whose httpd (uid 1000, port 8080)
# serves /www; /www/home links to the bound home, so a late-bound file shows at http://<ip>:8080/home/<file>.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
IMAGE="${1:-hearth/tiny:1}"
need_cmd docker docker.io
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] && file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || BUSYBOX=/bin/busybox
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is not static — apt-get install busybox-static"

if [ "${FORCE:-0}" != 1 ] && image_exists "$IMAGE"; then say "$IMAGE exists"; exit 0; fi
old_id=$(image_id "$IMAGE")
say "building $IMAGE from $BUSYBOX"
ROOTFS="$CACHE/tiny-rootfs"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"/{bin,etc,www,home/coder,tmp,proc,sys,dev}
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$ROOTFS/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\ncoder:x:1000:1000:coder:/home/coder:/bin/sh\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\ncoder:x:1000:\n' >"$ROOTFS/etc/group"
echo ok >"$ROOTFS/www/healthz"
echo '<html><body>hearth tiny workspace</body></html>' >"$ROOTFS/www/index.html"
ln -s /home/coder "$ROOTFS/www/home"
cat >"$ROOTFS/bin/hearth-entrypoint" <<'SH'
#!/bin/sh
# Serves /www on $PORT in the foreground; /home/<file> reads the (late-bound) home through the symlink.
exec httpd -f -p "0.0.0.0:${PORT:-8080}" -h /www
SH
chmod 755 "$ROOTFS/bin/hearth-entrypoint"
chmod 1777 "$ROOTFS/tmp"
chown 1000:1000 "$ROOTFS/home/coder"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'USER 1000:1000' --change 'WORKDIR /home/coder' --change 'ENV HOME=/home/coder PORT=8080' \
  --change 'EXPOSE 8080' --change 'LABEL hearth.image=tiny' \
  --change 'ENTRYPOINT ["/bin/hearth-entrypoint"]' - "$IMAGE" >/dev/null
say "built $IMAGE"
drop_replaced "$old_id" "$IMAGE"
