#!/usr/bin/env bash
# Builds (or reuses) the node parts of the one-node test cluster, each from its own Go
# module at a pinned version, into a per-machine cache outside the git tree:
#   ${CLUSTER_CACHE:-$HOME/.cache/smtp-relay-operator/cluster}/parts/<part>-<version>/bin
# and links every binary into .../cluster/bin (CNI plugins into .../cluster/cni). One stamp
# per part (version + Go version + hash of this script and the part's module files) decides
# reuse, so a changed part rebuilds alone; delete a part's folder to force it.
#
#   part          module (version)                                   how
#   k8s           k8s.io/kubernetes v1.37.2 (kubelet, kube-proxy,     k8s/go.mod here (same replace
#                 kube-scheduler)                                     lines as the control plane's)
#   containerd    github.com/containerd/containerd/v2 v2.4.2          go install (no replace lines)
#                 (containerd, containerd-shim-runc-v2, ctr)
#   runc          github.com/opencontainers/runc v1.5.3 (cgo,         go install, -tags seccomp
#                 libseccomp-dev)
#   cni           github.com/containernetworking/plugins v1.10.0      go install
#                 (ptp, host-local, loopback, portmap)
#   coredns       github.com/coredns/coredns v1.15.0                  coredns/ here: the upstream main
#                                                                     with only the plugins we use
#   certmanager   github.com/cert-manager/cert-manager v1.21.2        certmanager/ here: our own main
#                 (controller: certificates, CA/SelfSigned issuers)   over the module's public API
#   cmwebhook     github.com/cert-manager/cert-manager v1.21.2        cmwebhook/main.go here: our own main
#                 (webhook: validation, CertificateRequest identity)  over internal/webhook, built as a
#                                                                     package inside a symlink view of the
#                                                                     module (see build_cmwebhook)
#   kuberouter    github.com/cloudnativelabs/kube-router/v2 v2.10.0   kuberouter/ here: cmd/kube-router,
#                 (NetworkPolicy enforcement only, see cluster.ts)    its own k8s.io/* pins; netlink
#                                                                     replaced by v1.3.1 (see go.mod)
#   pause         our own pause (pause/ here) in an OCI archive       go build + a hand-made layout
#
# Go builds run under `nice -n 19` with -p ${CLUSTER_GO_PARALLEL:-2}. Each part's wall-clock
# build time is appended to .../cluster/build-times.log. `build.sh PART...` builds only those.
# Prints the cluster cache folder on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

[ -x /usr/local/go/bin/go ] && ! command -v go >/dev/null && export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "cluster: 'go' not found (install Go >= 1.26.8)" >&2; exit 1; }

home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
root="${CLUSTER_CACHE:-$home/.cache/smtp-relay-operator/cluster}"
mkdir -p "$root/parts" "$root/bin" "$root/cni"
gover="$(go env GOVERSION)"
par="${CLUSTER_GO_PARALLEL:-2}"
export GOFLAGS="-buildvcs=false"
ngo() { nice -n 19 go "$@"; }

K8S_VERSION="$(awk '{ for (i = 1; i < NF; i++) if ($i == "k8s.io/kubernetes") { print $(i+1); exit } }' k8s/go.mod)"
CERTMANAGER_VERSION="$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/cert-manager/cert-manager") { print $(i+1); exit } }' certmanager/go.mod)"
KUBEROUTER_VERSION="$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/cloudnativelabs/kube-router/v2") { print $(i+1); exit } }' kuberouter/go.mod)"
COREDNS_VERSION="$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/coredns/coredns") { print $(i+1); exit } }' coredns/go.mod)"
[ -n "$K8S_VERSION" ] && [ -n "$CERTMANAGER_VERSION" ] && [ -n "$COREDNS_VERSION" ] && [ -n "$KUBEROUTER_VERSION" ] || { echo "cluster: cannot read versions from k8s/go.mod, certmanager/go.mod, coredns/go.mod, kuberouter/go.mod" >&2; exit 1; }
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.3
CNI_VERSION=v1.10.0
PAUSE_VERSION=1

# part NAME VERSION "BINARIES" FILES... ; then the build function build_NAME OUT is called.
part() {
  local name="$1" version="$2" binaries="$3"; shift 3
  local dir="$root/parts/$name-$version"
  local want="$name $version; $gover; $({ declare -f "build_$name"; cat "$@"; } | sha256sum | cut -c1-16)"
  local b ok=1
  for b in $binaries; do [ -e "$dir/bin/$b" ] || ok=0; done
  if [ $ok = 1 ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$want" ]; then
    echo "cluster: reusing $name $version ($dir)" >&2
  else
    echo "cluster: building $name $version into $dir" >&2
    rm -rf "$dir" && mkdir -p "$dir"
    local tmp; tmp="$(mktemp -d "$dir/.build.XXXXXX")"
    local start=$SECONDS
    if ! "build_$name" "$tmp"; then
      rm -rf "$tmp"; echo "cluster: building $name $version failed" >&2; return 1
    fi
    mv "$tmp" "$dir/bin"
    echo "$want" > "$dir/.stamp"
    local took=$((SECONDS - start))
    echo "cluster: built $name $version in ${took}s" >&2
    echo "$(date -u +%FT%TZ) $name $version ${took}s ($gover, -p $par, load $(cut -d' ' -f1-3 /proc/loadavg))" >> "$root/build-times.log"
  fi
  local link_dir="$root/bin"
  for b in $binaries; do
    case "$name" in cni) link_dir="$root/cni" ;; esac
    ln -sfn "$dir/bin/$b" "$link_dir/$b"
  done
}

ld_k8s() {
  local minor; minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  echo "$ld"
}

build_k8s() {
  local out="$1" b ld; ld="$(ld_k8s)"
  (cd k8s && GOFLAGS="$GOFLAGS -mod=readonly" ngo mod download)
  for b in kubelet kube-proxy kube-scheduler; do
    (cd k8s && GOFLAGS="$GOFLAGS -mod=readonly" ngo build -trimpath -p "$par" -ldflags="$ld" -o "$out/$b" "k8s.io/kubernetes/cmd/$b")
  done
}

build_containerd() {
  local m=github.com/containerd/containerd/v2
  GOBIN="$1" CGO_ENABLED=0 ngo install -trimpath -p "$par" -tags no_btrfs,no_zfs,no_devmapper \
    -ldflags="-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m" \
    "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION"
}

build_runc() {
  pkg-config --exists libseccomp || { echo "cluster: runc needs libseccomp-dev (apt-get install libseccomp-dev; listed in .ci/run)" >&2; return 1; }
  GOBIN="$1" CGO_ENABLED=1 ngo install -trimpath -p "$par" -tags seccomp \
    -ldflags="-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
}

build_cni() {
  local m=github.com/containernetworking/plugins
  GOBIN="$1" CGO_ENABLED=0 ngo install -trimpath -p "$par" \
    -ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" \
    "$m/plugins/main/ptp@$CNI_VERSION" "$m/plugins/main/loopback@$CNI_VERSION" \
    "$m/plugins/ipam/host-local@$CNI_VERSION" "$m/plugins/meta/portmap@$CNI_VERSION"
}

build_coredns() {
  (cd coredns && GOFLAGS="$GOFLAGS -mod=readonly" CGO_ENABLED=0 ngo build -trimpath -p "$par" -ldflags="-s -w" -o "$1/coredns" .)
}

build_certmanager() {
  (cd certmanager && GOFLAGS="$GOFLAGS -mod=readonly" CGO_ENABLED=0 ngo build -trimpath -p "$par" -ldflags="-s -w" -o "$1/cert-manager-controller" .)
  # The CRDs of the same release, for the API server.
  local src; src="$(cd certmanager && GOFLAGS="$GOFLAGS -mod=readonly" go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
  mkdir -p "$1/crds" && cp "$src"/deploy/crds/*.yaml "$1/crds/" && chmod -R u+w "$1/crds"
}

# cert-manager's webhook wiring (internal/webhook) and validation are internal packages of the
# root module, and its cmd/webhook module is not served by the Go proxy (404). Our main is built
# as a package of that module: a temporary folder holds a symlink to every entry of the
# module cache's copy of cert-manager plus srop-cmwebhook/main.go (a copy of cmwebhook/main.go),
# and a copy of certmanager/go.mod (the controller's module graph, so both binaries share every
# version) replaces the module by that folder. (`go build -overlay` would be simpler, but the go
# command refuses to overlay files beneath GOMODCACHE.) Nothing of cert-manager is copied.
build_cmwebhook() {
  local out="$1" src work e
  # the module's files in the module cache (downloaded first: `go list -m` alone does not)
  (cd certmanager && GOFLAGS="$GOFLAGS -mod=readonly" go mod download github.com/cert-manager/cert-manager)
  src="$(cd certmanager && GOFLAGS="$GOFLAGS -mod=readonly" go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
  [ -n "$src" ] && [ -d "$src" ] || { echo "cluster: cert-manager's module is not in the module cache" >&2; return 1; }
  work="$(mktemp -d "$out/../.view.XXXXXX")"
  mkdir "$work/cert-manager" "$work/build"
  for e in "$src"/* "$src"/.[!.]*; do [ -e "$e" ] && ln -s "$e" "$work/cert-manager/"; done
  mkdir "$work/cert-manager/srop-cmwebhook" && cp cmwebhook/main.go "$work/cert-manager/srop-cmwebhook/main.go"
  cp certmanager/go.mod certmanager/go.sum "$work/build/"
  local rc=0
  (cd "$work/build" && go mod edit -replace="github.com/cert-manager/cert-manager=$work/cert-manager" &&
    GOFLAGS="$GOFLAGS -mod=readonly" CGO_ENABLED=0 ngo build -trimpath -p "$par" -ldflags="-s -w" \
      -o "$out/cert-manager-webhook" github.com/cert-manager/cert-manager/srop-cmwebhook) || rc=$?
  rm -rf "$work"
  return $rc
}

build_kuberouter() {
  local m=github.com/cloudnativelabs/kube-router/v2
  (cd kuberouter && GOFLAGS="$GOFLAGS -mod=readonly" CGO_ENABLED=0 ngo build -trimpath -p "$par" \
    -ldflags="-s -w -X $m/pkg/version.Version=$KUBEROUTER_VERSION" -o "$1/kube-router" "$m/cmd/kube-router")
}

build_pause() {
  (cd pause && CGO_ENABLED=0 ngo build -trimpath -ldflags="-s -w" -o "$1/pause" .)
  python3 pause/oci-archive.py "$1/pause" "localhost/smtp-relay-operator/pause:$PAUSE_VERSION" "$1/pause-image.tar"
}

want_parts=("$@")
[ ${#want_parts[@]} -gt 0 ] || want_parts=(pause containerd runc cni coredns k8s certmanager cmwebhook kuberouter)
total_start=$SECONDS
for p in "${want_parts[@]}"; do
  case "$p" in
    k8s)         part k8s "$K8S_VERSION" "kubelet kube-proxy kube-scheduler" k8s/go.mod k8s/go.sum k8s/tools.go ;;
    containerd)  part containerd "$CONTAINERD_VERSION" "containerd containerd-shim-runc-v2 ctr" ;;
    runc)        part runc "$RUNC_VERSION" "runc" ;;
    cni)         part cni "$CNI_VERSION" "ptp host-local loopback portmap" ;;
    coredns)     part coredns "$COREDNS_VERSION" "coredns" coredns/go.mod coredns/go.sum coredns/main.go ;;
    certmanager) part certmanager "$CERTMANAGER_VERSION" "cert-manager-controller crds" certmanager/go.mod certmanager/go.sum certmanager/main.go ;;
    cmwebhook)   part cmwebhook "$CERTMANAGER_VERSION" "cert-manager-webhook" certmanager/go.mod certmanager/go.sum cmwebhook/main.go ;;
    kuberouter)  part kuberouter "$KUBEROUTER_VERSION" "kube-router" kuberouter/go.mod kuberouter/go.sum kuberouter/tools.go ;;
    pause)       part pause "$PAUSE_VERSION" "pause pause-image.tar" pause/main.go pause/go.mod pause/oci-archive.py ;;
    *) echo "cluster: unknown part '$p'" >&2; exit 2 ;;
  esac
done
echo "cluster: parts ready in $((SECONDS - total_start)) s" >&2
echo "$root"
