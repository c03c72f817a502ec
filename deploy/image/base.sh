#!/usr/bin/env bash
# Build the local base image that `make image-test` builds deploy/Dockerfile on:
# a minimal Debian bookworm with python3, made with debootstrap from Debian's
# packages, because no container registry (and so no python:3.11-slim) can be
# reached here.  Debian bookworm's python is 3.11, so the cp311 wheels that
# `make image-wheels` builds on the host install in it unchanged.
#
#   deploy/image/base.sh [IMAGE]        (default localhost/wsproxy-base:bookworm)
#
# Cached: an image of that name whose recipe label matches this file's hash is
# kept, so only the first run on a machine (or a run after this file changed)
# pays for debootstrap.  REBUILD_BASE=1 forces a new one.
#
# Environment: DEBIAN_MIRROR (default: the bookworm mirror in
# /etc/apt/sources.list*, else http://deb.debian.org/debian), STORAGE_DRIVER
# (default vfs: works anywhere, no kernel overlay support needed).  Needs root
# (debootstrap, buildah mount).
set -euo pipefail

IMAGE=${1:-localhost/wsproxy-base:bookworm}
SUITE=bookworm
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
buildah=(buildah --storage-driver "$STORAGE_DRIVER")
RECIPE_LABEL=org.wsproxy.base-recipe
recipe=$(sha256sum "$0" | cut -c1-16)

have=$("${buildah[@]}" inspect --type image \
    --format "{{index .Docker.Config.Labels \"$RECIPE_LABEL\"}}" "$IMAGE" 2>/dev/null || true)
if [ "$have" = "$recipe" ] && [ "${REBUILD_BASE:-0}" != 1 ]; then
    echo "base image $IMAGE: cached (recipe $recipe)"
    exit 0
fi

# The mirror this machine's apt uses for $SUITE: deb822 stanzas (*.sources)
# first, then one-line entries (sources.list, *.list).
mirror_from_apt() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (deb && ok && uri != "" && !done) { print uri; done = 1 }
                deb = 1; ok = 0; uri = ""
            }
            BEGIN { deb = 1 }
            /^[[:space:]]*$/ { flush(); next }
            $1 == "Types:" { deb = 0; for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            $1 == "URIs:" { uri = $2 }
            $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { flush() }
        ' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v suite="$SUITE" '$1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) print $i }'
}
mirror=${DEBIAN_MIRROR:-$(mirror_from_apt | head -n1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d "${TMPDIR:-/var/tmp}/wsproxy-base.XXXXXX")
ctr=
cleanup() {
    # debootstrap mounts /proc and /sys (and, inside a container, may bind
    # /dev) under the target; a failed run can leave them there.  Unmount
    # everything below $root before removing it, or rm would reach the host's.
    local m
    awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$root"
    if [ -n "$ctr" ]; then "${buildah[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

PATH=$PATH:/usr/sbin:/sbin
if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null; then
    echo "base.sh: building $IMAGE needs root and debootstrap" \
        "(apt-get install debootstrap buildah; .ci/run does)" >&2
    exit 1
fi
echo "base image $IMAGE: debootstrap $SUITE from $mirror"
start=$SECONDS
# minbase: only Essential packages and apt.  python3 brings the interpreter
# and its standard library; ca-certificates lets an upstream's TLS
# certificate be verified against the public CAs (as python:3.11-slim does).
debootstrap --variant=minbase --include=python3,ca-certificates \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 30 "$root.log" >&2
    echo "base.sh: debootstrap failed (full log: $root.log)" >&2
    exit 1
}
rm -f "$root.log"

# Trim what a container never reads (the same as Debian's own -slim images):
# documentation, manual pages, translations, apt's package lists and caches,
# logs; and what the runtime provides (resolv.conf, hostname).
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/lintian "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/etc/resolv.conf "$root"/etc/hostname
# ... and keep later `apt-get install`s (in images built on this one) slim too.
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF

ctr=$("${buildah[@]}" from scratch)
mnt=$("${buildah[@]}" mount "$ctr")
tar -C "$root" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
"${buildah[@]}" umount "$ctr" >/dev/null
"${buildah[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    --label "$RECIPE_LABEL=$recipe" \
    --label "org.opencontainers.image.description=Debian $SUITE minbase with python3 (debootstrap)" \
    "$ctr"
"${buildah[@]}" commit --quiet --format docker --rm "$ctr" "$IMAGE" >/dev/null
ctr=
echo "base image $IMAGE: built in $((SECONDS - start))s," \
    "$("${buildah[@]}" images --format '{{.Size}}' "$IMAGE")"
