#!/usr/bin/env bash
# Build deploy/Dockerfile with buildah, without a Docker engine or a registry:
#
#   deploy/image/build.sh IMAGE BASE_IMAGE      (make image)
#
# The wheels must be in deploy/image/wheels/ (make image-wheels) and
# BASE_IMAGE in local storage (make image-base).  --format docker: the OCI
# image format has no HEALTHCHECK, STOPSIGNAL is kept by both.  --isolation
# chroot: RUN steps need no runc and no user namespaces.  STORAGE_DRIVER
# (default vfs) as for deploy/image/base.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${1:?usage: build.sh IMAGE BASE_IMAGE}
base=${2:?usage: build.sh IMAGE BASE_IMAGE}
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

if ! compgen -G 'deploy/image/wheels/wsproxy-*.whl' >/dev/null; then
    echo "build.sh: no wheels in deploy/image/wheels/ (run make image-wheels)" >&2
    exit 1
fi
previous=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null ||
    true)
start=$SECONDS
"${buildah[@]}" bud --isolation chroot --format docker --pull=never \
    --ignorefile deploy/Dockerfile.dockerignore --build-arg BASE_IMAGE="$base" \
    -f deploy/Dockerfile -t "$image" .
current=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image")
# The image this one replaced is left without a name: remove it, or every
# build would leave a few hundred MB behind (vfs stores whole copies).
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    "${buildah[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
echo "image $image: built in $((SECONDS - start))s on $base," \
    "$("${buildah[@]}" images --format '{{.Size}}' "$image")"
