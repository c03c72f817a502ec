#!/usr/bin/env bash
# Build every wheel deploy/Dockerfile installs into one directory, on the host:
# wsproxy itself, its dependencies, and pip (the image runs pip straight from
# its wheel).  The image build then needs no network and no compiler.
#
#   deploy/image/wheels.sh PIP DIR      (make image-wheels: .venv/bin/pip)
#
# Dependencies are pinned to the versions installed beside PIP (`pip freeze`),
# so the image runs what `make test` tested.  wsproxy is built from a clean
# copy of the source: a stale build/ in the work tree would put modules that
# no longer exist into the wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."

pip=${1:?usage: wheels.sh PIP DIR}
out=${2:?usage: wheels.sh PIP DIR}
src=$(mktemp -d "${TMPDIR:-/tmp}/wsproxy-src.XXXXXX")
trap 'rm -rf "$src"' EXIT

tar --exclude=__pycache__ -cf - pyproject.toml README.md wsproxy | tar -C "$src" -xf -
rm -rf "$out"
mkdir -p "$out"
"$pip" freeze --exclude-editable | grep -v '^wsproxy[ =@]' >"$src/constraints.txt" || true
"$pip" wheel -qq --disable-pip-version-check -c "$src/constraints.txt" -w "$out" "$src" pip
cp "$src/constraints.txt" "$out/constraints.txt"
echo "wheels for the image in $out:" \
    "$(cd "$out" && ls -1 ./*.whl | sed -E 's|^\./([^-]+-[^-]+)-.*|\1|' | tr '\n' ' ')"
