# syntax=docker/dockerfile:1
# smtp-relay-operator: one image, two programs.
#   docker run IMAGE operator [flags]      the controller (dist/operator/main.js)
#   docker run IMAGE relay serve --config /etc/smtp-relay/relay.yaml   the SMTP relay (dist/relay/main.js)
#
# The bases are build arguments. With Docker they default to the official Node.js 24 LTS
# image; `make image` (buildah, no registry) passes bases it built from scratch instead
# (test/image/base.sh). Both stages only use what the official image also has.
ARG BUILD_IMAGE=node:24-bookworm-slim
ARG BASE_IMAGE=node:24-bookworm-slim

# --- build: all dependencies, TypeScript compile ----------------------------------------
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json entrypoint.ts ./
COPY relay/ relay/
COPY operator/ operator/
RUN node node_modules/typescript/bin/tsc -p tsconfig.json

# --- production dependencies only -------------------------------------------------------
FROM ${BUILD_IMAGE} AS prod-deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# --- runtime ----------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV NODE_ENV=production
# glibc malloc: allocations of 64 KiB and more get their own mapping (only the pages they
# touch are resident, returned to the system on free). Node gives every TLS connection a
# 64 KiB read buffer for its life; with this the relay holds ~8 KiB less per idle TLS
# session (docs/benchmarks.md). bench/targets.ts starts the relay with this ENV and the
# ENTRYPOINT's node flags, read from this file.
ENV MALLOC_MMAP_THRESHOLD_=65536
WORKDIR /app
# Everything under /app belongs to root and is read-only for the program's user.
COPY --from=prod-deps /src/package.json /src/package-lock.json ./
COPY --from=prod-deps /src/node_modules/ node_modules/
COPY --from=build /src/dist/ dist/
# Non-root, numeric so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# --initial-heap-size=64: V8 starts with room for 64 MB instead of growing from a few MB,
# so the relay's per-message garbage no longer triggers a Mark-Compact every few hundred
# messages (117 -> 13 in 20 s at 1,358 msgs/s; docs/benchmarks.md, "Relay, latency").
ENTRYPOINT ["node", "--initial-heap-size=64", "/app/dist/entrypoint.js"]
CMD ["--help"]
