#!/usr/bin/env bash
# Builds an image derived from hearth/code-server (ai-builder, web-app-builder) from images/<name>/Dockerfile,
# FROM the locally imported base: no registry needed. Usage: build-derived.sh <name> [tag]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
NAME="${1:?usage: build-derived.sh <name> [image tag]}"
BASE="hearth/code-server:${CODE_SERVER_VERSION:-4.100.3}"
IMAGE="${2:-hearth/$NAME:${CODE_SERVER_VERSION:-4.100.3}}"
CONTEXT="$ROOT/images/$NAME"
[ -e "$CONTEXT/Dockerfile" ] || die "no $CONTEXT/Dockerfile"
if [ "${FORCE:-0}" != 1 ] && image_exists "$IMAGE"; then say "$IMAGE exists"; exit 0; fi
image_exists "$BASE" || "$(dirname "$0")/build-code-server.sh" "$BASE"
old_id=$(image_id "$IMAGE")
say "building $IMAGE from $BASE"
# The classic builder resolves FROM against local images only when the tag is there: no registry lookup.
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$BASE" -t "$IMAGE" "$CONTEXT" 2>&1 >/dev/null \
  | { grep -vE 'DEPRECATED|BuildKit|environment-variable|^\s*$' || true; } >&2
say "built $IMAGE"
drop_replaced "$old_id" "$IMAGE"
