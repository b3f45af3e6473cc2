#!/usr/bin/env bash
# Builds (or reuses) the test control plane binaries: kube-apiserver,
# kube-controller-manager and etcd, from the Go modules pinned in go.mod here.
#
# They go to a cache folder outside the git tree, so one machine builds them
# once and every later clone (CI runs in a fresh clone) reuses them:
#   ${CONTROLPLANE_CACHE:-$HOME/.cache/smtp-relay-operator/controlplane}/<k8s version>/bin
# A stamp file in that folder (versions + hash of go.mod/go.sum/this script +
# Go version) decides reuse; delete the folder to force a rebuild.
#
# Prints the bin folder on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

[ -x /usr/local/go/bin/go ] && ! command -v go >/dev/null && export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || {
  echo "controlplane: 'go' not found. The test control plane is built from the Kubernetes Go modules;" >&2
  echo "install Go >= 1.26 (go.mod of Kubernetes v1.37 needs it; Debian's golang-go is older) and run 'make controlplane'." >&2
  exit 1
}

k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' go.mod)"
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] || { echo "controlplane: cannot read versions from $here/go.mod" >&2; exit 1; }

home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
root="${CONTROLPLANE_CACHE:-$home/.cache/smtp-relay-operator/controlplane}"
bin="$root/$k8s_version/bin"
stamp_file="$bin/.stamp"
want_stamp="k8s.io/kubernetes $k8s_version; go.etcd.io/etcd/server/v3 $etcd_version; $(go env GOVERSION); $(cat go.mod go.sum build.sh | sha256sum | cut -c1-16)"
binaries=(kube-apiserver kube-controller-manager etcd)

have_all() {
  local b
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

if have_all && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want_stamp" ]; then
  echo "controlplane: reusing $bin ($k8s_version, etcd $etcd_version)" >&2
  echo "$bin"
  exit 0
fi

echo "controlplane: building kube-apiserver, kube-controller-manager $k8s_version and etcd $etcd_version into $bin" >&2
echo "controlplane: the first build on a machine takes about 6 min on 2 idle cores (up to ~13 min on a busy machine)" >&2
mkdir -p "$bin"
rm -f "$stamp_file"
tmp="$(mktemp -d "$bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# -p 2: CI machines have 2 cores; more parallel links only add memory pressure.
# The -X stamps make /version report the release (a plain `go build` says v0.0.0-master).
minor="$(echo "$k8s_version" | cut -d. -f2)"
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
flags=(-trimpath -p "${CONTROLPLANE_GO_PARALLEL:-2}")
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
go mod download
go build "${flags[@]}" -ldflags="$ld" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build "${flags[@]}" -ldflags="$ld" -o "$tmp/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
go build "${flags[@]}" -ldflags="-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3

for b in "${binaries[@]}"; do mv -f "$tmp/$b" "$bin/$b"; done
echo "$want_stamp" > "$stamp_file"
echo "controlplane: built in $((SECONDS - start)) s:" >&2
(cd "$bin" && ls -l "${binaries[@]}" >&2)
echo "$bin"
