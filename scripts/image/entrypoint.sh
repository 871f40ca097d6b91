#!/bin/sh
# The image's entry point: seed the writable Numba cache from the kernels compiled at build time,
# then exec the command (by default `leitstand run`, with the container's arguments after it).
#
# Numba only uses a cache directory it can write to (it probes with a temporary file and otherwise
# falls back to other places, or fails with "no locator available"), so the cache baked into the
# image at $LEITSTAND_NUMBA_SEED (root-owned, read-only) is copied into $NUMBA_CACHE_DIR (an emptyDir
# under a read-only root file system; a directory owned by the runtime user otherwise) when that is
# empty. A copy of a few MB takes milliseconds; compiling the kernels takes tens of seconds.
# LEITSTAND_NUMBA_SEED= (empty) turns the seeding off (a cold start, as scripts/image.sh measures).
set -eu

seed=${LEITSTAND_NUMBA_SEED-/opt/leitstand/numba-cache}
cache=${NUMBA_CACHE_DIR:-}

if [ -n "$seed" ] && [ -d "$seed" ] && [ -n "$cache" ] && [ "$cache" != "$seed" ]; then
    if mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; then
        # an emptyDir survives container restarts within the pod: keep what is there (seeded before,
        # plus anything compiled since)
        if [ -z "$(ls -A "$cache")" ]; then
            cp -R "$seed/." "$cache/"
        fi
    else
        echo "leitstand: NUMBA_CACHE_DIR=$cache is not writable; the compiled kernels cannot be used." \
            "Mount a writable volume there (an emptyDir when the root file system is read-only)." >&2
    fi
fi

exec "$@"
