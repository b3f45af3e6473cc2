# syntax=docker/dockerfile:1
# smtp-relay-operator: one image, two programs.
#   docker run IMAGE operator [flags]      the controller (dist/operator/main.js)
#   docker run IMAGE relay serve --config /etc/smtp-relay/relay.yaml   the SMTP relay (dist/relay/main.js)
#
# The bases are build arguments. With Docker they default to the official Node.js 24 LTS
# image; `make image` (buildah, no registry) passes bases it built from scratch instead
# (test/harness/image/base.sh). Both stages only use what the official image also has.
ARG BUILD_IMAGE=node:24-bookworm-slim
ARG BASE_IMAGE=node:24-bookworm-slim

# --- build: all dependencies, TypeScript compile ----------------------------------------
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --prefer-offline --ignore-scripts --no-audit --no-fund
COPY tsconfig.json entrypoint.ts ./
COPY relay/ relay/
COPY operator/ operator/
RUN node node_modules/typescript/bin/tsc -p tsconfig.json

# --- production dependencies only -------------------------------------------------------
FROM ${BUILD_IMAGE} AS prod-deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --prefer-offline --omit=dev --ignore-scripts --no-audit --no-fund

# --- runtime ----------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
# Everything under /app belongs to root and is read-only for the program's user.
COPY --from=prod-deps /src/package.json /src/package-lock.json ./
COPY --from=prod-deps /src/node_modules/ node_modules/
COPY --from=build /src/dist/ dist/
# Non-root, numeric so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# Each program's node flags and malloc settings are in entrypoint.ts (`programs`): it
# re-executes itself with them (same PID), so they are the same here and in the bench.
ENTRYPOINT ["node", "/app/dist/entrypoint.js"]
CMD ["--help"]
