#!/bin/sh
# imagegen-entrypoint: runs the container's command, after checking that a checkout mounted at /app belongs to
# this container's user. git and DVC refuse a repository owned by another user, and files written by a run
# would belong to the wrong user, so a mismatch stops here with the fix instead of failing in every run.
# IMAGEGEN_SKIP_OWNER_CHECK=1 skips the check.
set -e
if [ -e /app/.git ] && [ -z "${IMAGEGEN_SKIP_OWNER_CHECK:-}" ]; then
    owner=$(stat -c %u /app)
    if [ "$owner" != "$(id -u)" ]; then
        echo "imagegen: the checkout mounted at /app belongs to uid $owner:$(stat -c %g /app), this container runs" \
            "as uid $(id -u):$(id -g); rebuild the image for the checkout's owner:" \
            "IMAGEGEN_UID=$owner IMAGEGEN_GID=$(stat -c %g /app) docker compose -f docker/compose.yaml build" >&2
        exit 1
    fi
fi
exec "$@"
