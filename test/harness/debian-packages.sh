#!/usr/bin/env bash
# The Debian packages make test, make demo and make bench use, installed when missing (as
# root; apt-get): postfix (smtp-sink, the bench's Postfix, and the app-side Postfix of
# test/relay/dsn-postfix.test.ts), swaks with its TLS modules,
# openssl, python3-dkim (dkimpy verifies signatures), prometheus (promtool and a real
# scrape), buildah and runc (the image and its containers), iproute2 (network namespaces),
# sasl2-bin/libsasl2-modules and stunnel4 (the bench's Postfix AUTH and TLS ceiling; the
# SASL PLAIN client of the test's Postfix);
# libc6-dev, pkg-config, libseccomp-dev (runc's cgo build) and iptables, ipset, conntrack
# (kube-proxy) for the one-node cluster (make cluster, test/harness/cluster/).
set -euo pipefail
need=(postfix swaks libnet-ssleay-perl libio-socket-ssl-perl openssl python3-dkim prometheus buildah runc iproute2 sasl2-bin libsasl2-modules stunnel4
      libc6-dev pkg-config libseccomp-dev iptables ipset conntrack)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; run as root, or: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
