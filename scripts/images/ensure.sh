#!/usr/bin/env bash
# Builds whichever of the given images (default: every template image) is missing, showing progress.
# `make run` calls it on start so a newcomer's first open works; `make images` calls it with FORCE=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DIR="$(dirname "$0")"
V="${CODE_SERVER_VERSION:-4.100.3}"
images=("$@")
[ ${#images[@]} -gt 0 ] || images=("hearth/tiny:1" "hearth/code-server:$V" "hearth/ai-builder:$V" "hearth/web-app-builder:$V")
for image in "${images[@]}"; do
  if [ "${FORCE:-0}" != 1 ] && image_exists "$image"; then continue; fi
  repo="${image%:*}"
  case "${repo#hearth/}" in
    tiny) "$DIR/build-tiny.sh" "$image" ;;
    code-server) CODE_SERVER_VERSION="${image##*:}" "$DIR/build-code-server.sh" "$image" ;;
    ai-builder|web-app-builder) "$DIR/build-derived.sh" "${repo#hearth/}" "$image" ;;
    *) die "don't know how to build $image (known: hearth/tiny, hearth/code-server, hearth/ai-builder, hearth/web-app-builder)" ;;
  esac
done
