#!/usr/bin/env bash
# Build Leitstand's container image without a Docker engine, smoke-test it, and measure it
# (docs/image.md). Debian's buildah builds the Dockerfile with chroot isolation from a LOCAL base
# image: a Debian bookworm root file system made with debootstrap plus Debian's python3 (3.11) and
# python3-venv, imported as localhost/debian-python:3.11 (no image registry is needed). Then, as the
# image's non-root user, `leitstand --version` and `leitstand run --check` run inside the image, and the
# start of `leitstand run --check` is timed with the kernels precompiled in the image and without.
#
#   bash scripts/image.sh                  # build from the work tree (as `docker build .` would)
#   bash scripts/image.sh --git HEAD       # build from a clean export of a commit
#   bash scripts/image.sh --context DIR    # build from another directory (a prepared build context)
#   bash scripts/image.sh --no-build       # measure the image built before
#   options: --runs N (timed runs per case, default 3), --base IMAGE (another local base image),
#            --tag NAME, --rebuild-base, --no-compressed-size
#
# Cached outside the repository, in ~/.cache/leitstand/image (LEITSTAND_IMAGE_CACHE): the base root
# file system (a tar), and buildah's own storage (graph root) holding the base image and the built
# image. Everything else this script creates (working containers, mounts, exports) is removed on exit.
# Look at the images with: buildah --root ~/.cache/leitstand/image/storage images
# Needs root (debootstrap, buildah); installs Debian's buildah and debootstrap when missing.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LEITSTAND_IMAGE_CACHE:-$HOME/.cache/leitstand/image}
STORAGE=$CACHE/storage
RUNROOT=$CACHE/run
ROOTFS_TAR=$CACHE/bookworm-python3.11-rootfs.tar
LOCAL_BASE=localhost/debian-python:3.11
MIRROR=${LEITSTAND_DEBIAN_MIRROR:-http://deb.debian.org/debian}

runs=3; git_ref=; context=; build=1; base=; tag=; rebuild_base=0; compressed=1
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --git) git_ref=$2; shift 2 ;;
        --context) context=$(cd "$2" && pwd); shift 2 ;;
        --no-build) build=0; shift ;;
        --base) base=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --rebuild-base) rebuild_base=1; shift ;;
        --no-compressed-size) compressed=0; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (--help)" >&2; exit 2 ;;
    esac
done

say() { printf '== %s\n' "$*"; }
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and buildah's chroot isolation need it)"
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    say "installing Debian's buildah and debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
image=${tag:-localhost/leitstand:$version}
mkdir -p "$CACHE"

# One storage driver per graph root, chosen once: overlay where the kernel has it, vfs otherwise
# (LEITSTAND_IMAGE_DRIVER=vfs forces it for a new cache directory).
if [ -d "$STORAGE/vfs" ]; then driver=vfs
elif [ -d "$STORAGE/overlay" ]; then driver=overlay
elif [ -n "${LEITSTAND_IMAGE_DRIVER:-}" ]; then driver=$LEITSTAND_IMAGE_DRIVER
elif grep -qw overlay /proc/filesystems; then driver=overlay
else driver=vfs
fi
export BUILDAH_ISOLATION=chroot
B=(buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver "$driver")

# --- transient things, removed on every exit -------------------------------------------------------
containers=(); tmpdirs=()
cleanup() {
    local c d
    for c in "${containers[@]}"; do "${B[@]}" umount "$c" >/dev/null 2>&1 || true; "${B[@]}" rm "$c" >/dev/null 2>&1 || true; done
    for d in "${tmpdirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
# both set $REPLY (not printed: a command substitution's subshell would lose the bookkeeping)
new_container() {  # new_container IMAGE: a working container, removed on exit
    REPLY=$("${B[@]}" from --pull=never --quiet "$1"); containers+=("$REPLY")
}
new_tmpdir() { REPLY=$(mktemp -d "$CACHE/tmp.XXXXXX"); tmpdirs+=("$REPLY"); }

# --- the local base image ------------------------------------------------------------------------
make_rootfs() {  # a minimal Debian bookworm with Debian's python3 (3.11) and venv, as a tar
    new_tmpdir; local dir=$REPLY/rootfs
    say "debootstrap bookworm (minbase) + python3 python3-venv into $dir"
    debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    chroot "$dir" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends python3 python3-venv ca-certificates >/dev/null && apt-get clean' \
        >>"$CACHE/debootstrap.log" 2>&1 || die "apt-get in the new root failed (log: $CACHE/debootstrap.log)"
    # what the official slim images leave out too
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
        "$dir"/usr/share/locale/* "$dir"/var/cache/debconf/*-old "$dir"/var/log/*.log "$dir"/debootstrap
    : >"$dir/etc/resolv.conf"
    tar -C "$dir" --numeric-owner -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$dir"
}
ensure_local_base() {
    if [ "$rebuild_base" = 1 ]; then
        rm -f "$ROOTFS_TAR"; "${B[@]}" rmi -f "$LOCAL_BASE" >/dev/null 2>&1 || true
    fi
    if "${B[@]}" inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
        say "base image $LOCAL_BASE: cached"; return
    fi
    [ -f "$ROOTFS_TAR" ] || make_rootfs
    say "importing $ROOTFS_TAR as $LOCAL_BASE"
    local c mnt; c=$("${B[@]}" from scratch); containers+=("$c")
    mnt=$("${B[@]}" mount "$c")
    tar -C "$mnt" --numeric-owner -xpf "$ROOTFS_TAR"
    "${B[@]}" umount "$c" >/dev/null
    "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 --label org.opencontainers.image.description="Debian bookworm (debootstrap minbase) + python3 3.11" "$c"
    "${B[@]}" commit --quiet "$c" "$LOCAL_BASE" >/dev/null
}

if [ -z "$base" ]; then ensure_local_base; base=$LOCAL_BASE; fi

# --- build ---------------------------------------------------------------------------------------
if [ "$build" = 1 ]; then
    if [ -n "$context" ]; then
        revision=$(git -C "$context" rev-parse HEAD 2>/dev/null || echo unknown)
    elif [ -n "$git_ref" ]; then
        new_tmpdir; context=$REPLY/context; mkdir "$context"
        git -C "$REPO" archive "$git_ref" | tar -x -C "$context"
        revision=$(git -C "$REPO" rev-parse "$git_ref")
    else
        context=$REPO
        revision=$(git -C "$REPO" rev-parse HEAD)
        [ -z "$(git -C "$REPO" status --porcelain -- pyproject.toml README.md scheduler operator Dockerfile \
            scripts/image)" ] || revision="$revision-dirty"
    fi
    # Behind a TLS-intercepting proxy (this machine's egress is one) the build's pip needs the host's CA
    # bundle: it is bind-mounted over the base's bundle for the RUN steps only, never committed.
    proxy_ca=()
    host_ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
    if [ -n "$host_ca" ] && [ -f "$host_ca" ]; then
        proxy_ca=(--volume "$host_ca:/etc/ssl/certs/ca-certificates.crt:ro"
                  --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
    fi
    say "buildah bud $image from $base (context: ${git_ref:-$context}, storage: $driver in $STORAGE)"
    started=$(date +%s)
    "${B[@]}" bud --isolation=chroot --pull=never --force-rm --layers="${LEITSTAND_IMAGE_LAYERS:-false}" "${proxy_ca[@]}" \
        --build-arg BASE="$base" --build-arg VERSION="$version" --build-arg REVISION="$revision" \
        --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        -f "$context/Dockerfile" -t "$image" "$context" >"$CACHE/build.log" 2>&1 \
        || { tail -40 "$CACHE/build.log" >&2; die "build failed (log: $CACHE/build.log)"; }
    build_seconds=$(( $(date +%s) - started ))
    say "built in ${build_seconds} s (log: $CACHE/build.log)"
    # the build stage and an image this tag pointed to before are dangling now (unless layers are cached)
    [ "${LEITSTAND_IMAGE_LAYERS:-false}" = true ] || "${B[@]}" rmi --prune >/dev/null 2>&1 || true
fi
"${B[@]}" inspect --type image "$image" >/dev/null 2>&1 || die "no image $image (build it first)"

# --- what the image is -----------------------------------------------------------------------------
# buildah images reports sizes as text ("701 MB", decimal units): turned back into bytes here
image_bytes() {
    "${B[@]}" images --json "$1" | python3 -c 'import json, sys
number, unit = json.load(sys.stdin)[0]["size"].split()
print(round(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]))'
}
size=$(image_bytes "$image"); base_size=$(image_bytes "$base")
mb() { python3 -c "print(f'{$1 / 1e6:.0f} MB')"; }
config=$("${B[@]}" inspect --type image "$image")
config_field() { python3 -c 'import json,sys; c=json.loads(sys.argv[1])["OCIv1"]["config"]; print(eval(sys.argv[2]))' "$config" "$1"; }
user=$(config_field 'c["User"]')
entrypoint=$(config_field 'json.dumps(c["Entrypoint"])')
[ "$entrypoint" = '["/opt/leitstand/bin/entrypoint", "leitstand", "run"]' ] || die "unexpected entrypoint $entrypoint"
[ "$user" = 10001:10001 ] || die "unexpected user $user"
mapfile -t image_env < <(config_field '"\n".join(c["Env"])')

compressed_size="-"
if [ "$compressed" = 1 ]; then
    new_tmpdir; out=$REPLY
    "${B[@]}" push --quiet --format oci "$image" "oci:$out/oci" >/dev/null
    compressed_size=$(python3 - "$out/oci" <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
def blob(digest): return root / "blobs" / digest.replace(":", "/")
index = json.loads((root / "index.json").read_text())
manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
print(sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"])
EOF
)
    rm -rf "$out"
fi

new_container "$image"; ctr=$REPLY
run_user() { "${B[@]}" run --isolation=chroot --user 10001:10001 "$ctr" -- "$@"; }

say "smoke test inside the image (buildah run --isolation=chroot --user 10001:10001)"
run_user leitstand --version
run_user id
run_user /opt/leitstand/bin/entrypoint leitstand run --check
echo "largest parts of the venv:"
run_user sh -c 'cd /opt/leitstand/venv/lib/python3*/site-packages && du -sm -- * | sort -rn | head -8' | sed 's/^/  /'
du_cache=$(run_user du -sk /opt/leitstand/numba-cache | cut -f1)
version_line=$(run_user leitstand --version)

# --- start times -----------------------------------------------------------------------------------
# One timed start: the entry point (seeding on or off) and `leitstand run --check`, wall clock measured
# inside the container from before the entry point to after the process ends (interpreter start,
# imports, the cache copy, kernels loaded or compiled); "kernels" is what run --check itself reports.
timed_script='d=$1; shift; t0=$(date +%s%N); out=$(NUMBA_CACHE_DIR=$d "$@" 2>&1) || { echo "FAILED: $out"; exit 1; }
t1=$(date +%s%N); k=$(printf "%s\n" "$out" | sed -n "s/.*kernels ready in \([0-9.]*\) s.*/\1/p")
n=$(find "$d" -name "*.nbi" | wc -l); echo "$(( (t1 - t0) / 1000000 )) $k $n"'
# a read-only root file system with a tmpfs where Kubernetes would mount the emptyDir, as in a pod with
# readOnlyRootFilesystem: the image mounted, bound read-only in a private mount namespace, chroot'ed
ro_mnt=$("${B[@]}" mount "$ctr")
run_readonly() {  # run_readonly CMD... (as 10001, the image's environment)
    unshare --mount --propagation private /bin/sh -ec '
        root=$1; shift
        mount --bind "$root" "$root"; mount -o remount,bind,ro "$root"
        mount -t tmpfs -o size=512m,mode=0755,uid=10001,gid=10001 tmpfs "$root/var/cache/leitstand/numba"
        mount --rbind /dev "$root/dev"; mount -t proc proc "$root/proc"
        exec chroot --userspec=10001:10001 "$root" "$@"' sh "$ro_mnt" /usr/bin/env -i "${image_env[@]}" "$@"
}

ro_probe=$(run_readonly /bin/sh -c 'touch /tmp/probe 2>&1; touch /var/cache/leitstand/numba/probe && echo "cache dir: writable"')
printf 'read-only root file system (as 10001): %s\n' "$(printf '%s' "$ro_probe" | tr '\n' ';' | sed 's/;$//')"
case $ro_probe in *"Read-only file system"*"cache dir: writable"*) ;; *) die "the read-only set-up is not what a pod has: $ro_probe" ;; esac

declare -A label=(
    [cold]="cold: no precompiled kernels (empty cache)"
    [seeded]="new pod: cache seeded from the image"
    [ro]="read-only root fs + tmpfs cache (seeded)"
)
declare -A walls kernels
one_run() {  # one_run CASE I -> "wall_ms kernels_s index_files"
    local dir=/tmp/numba-$1-$2
    case $1 in
        cold) run_user env LEITSTAND_NUMBA_SEED= sh -c "$timed_script" sh "$dir" /opt/leitstand/bin/entrypoint leitstand run --check ;;
        seeded) run_user sh -c "$timed_script" sh "$dir" /opt/leitstand/bin/entrypoint leitstand run --check ;;
        ro) run_readonly /bin/sh -c "$timed_script" sh /var/cache/leitstand/numba \
                /opt/leitstand/bin/entrypoint leitstand run --check ;;
    esac
}
say "start times: $runs runs per case, interleaved"
for i in $(seq 1 "$runs"); do
    for case in cold seeded ro; do
        result=$(one_run "$case" "$i") || die "$case run $i: $result"
        read -r wall k n <<<"$result"
        printf '  run %d %-8s wall %6.2f s  kernels %6s s  cache index files %s\n' "$i" "$case" \
            "$(python3 -c "print($wall/1000)")" "$k" "$n"
        walls[$case]+="$wall "; kernels[$case]+="$k "
    done
done
"${B[@]}" umount "$ctr" >/dev/null

# the seeded cache on a node whose CPU key differs (here: NUMBA_CPU_NAME unset, i.e. the host's CPU name
# and features instead of `generic`): every kernel misses and compiles, as a host-keyed cache would do on
# any other CPU model
say "seeded, but a different CPU key (NUMBA_CPU_NAME/NUMBA_CPU_FEATURES unset: the host's CPU)"
result=$(run_user env -u NUMBA_CPU_NAME -u NUMBA_CPU_FEATURES sh -c "$timed_script" sh /tmp/numba-othercpu \
    /opt/leitstand/bin/entrypoint leitstand run --check) || die "other-CPU run: $result"
read -r othercpu_wall othercpu_kernels _ <<<"$result"
printf '  wall %.2f s  kernels %s s\n' "$(python3 -c "print($othercpu_wall/1000)")" "$othercpu_kernels"

# the seed used in place, without the copy: Numba refuses a cache directory it cannot write to
say "the baked cache used in place, read-only to the runtime user (expected to fail)"
if inplace=$(run_user env _TYPER_STANDARD_TRACEBACK=1 NUMBA_CACHE_DIR=/opt/leitstand/numba-cache LEITSTAND_NUMBA_SEED= \
        leitstand run --check 2>&1); then
    inplace_result="works: $(printf '%s\n' "$inplace" | tail -1)"
else
    inplace_result="fails: $(printf '%s\n' "$inplace" | grep -m1 -E '^[A-Za-z]+Error: ' || printf '%s\n' "$inplace" | tail -1)"
fi
echo "  $inplace_result"

# --- summary -----------------------------------------------------------------------------------------
stats() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[2:]]; s=float(sys.argv[1]); print(f"{statistics.median(v)/s:7.2f} s  ({min(v)/s:.2f}-{max(v)/s:.2f})")' "$@"; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
echo
say "summary: $image"
printf '%-44s %s\n' "image size (uncompressed, buildah images)" "$(mb "$size")   (base $base: $(mb "$base_size"), leitstand on top: $(mb "$((size - base_size))"))"
[ "$compressed_size" = - ] || printf '%-44s %s\n' "image size (compressed layers, as pushed)" "$(mb "$compressed_size")"
printf '%-44s %s\n' "precompiled Numba cache in the image" "$(python3 -c "print(f'{$du_cache / 1024:.1f} MiB')"), /opt/leitstand/numba-cache (NUMBA_CPU_NAME=$(printf '%s\n' "${image_env[@]}" | sed -n 's/^NUMBA_CPU_NAME=//p'))"
[ -z "${build_seconds:-}" ] || printf '%-44s %s\n' "build time (buildah bud)" "$build_seconds s"
printf '%-44s %s\n' "in-image smoke (user 10001)" "$version_line; run --check ok"
printf '%-44s %s\n' "user, entry point" "$user, $entrypoint"
echo
printf '%-44s %-24s %s\n' "leitstand run --check, $runs runs each" "wall: median (min-max)" "kernels: median (min-max)"
for case in cold seeded ro; do
    # shellcheck disable=SC2086
    printf '%-44s %-24s %s\n' "${label[$case]}" "$(stats 1000 ${walls[$case]})" "$(stats 1 ${kernels[$case]})"
done
# shellcheck disable=SC2086
printf '%-44s wall %.1fx, kernels %.0fx faster with the precompiled cache\n' "speed-up (medians, new pod vs cold)" \
    "$(python3 -c "print($(median ${walls[cold]}) / $(median ${walls[seeded]}))")" \
    "$(python3 -c "print($(median ${kernels[cold]}) / max($(median ${kernels[seeded]}), 1e-3))")"
printf '%-44s wall %.2f s, kernels %s s (every kernel compiled again)\n' "seeded, other CPU key (host CPU, 1 run)" \
    "$(python3 -c "print($othercpu_wall/1000)")" "$othercpu_kernels"
printf '%-44s %s\n' "baked cache used in place (read-only)" "$inplace_result"
