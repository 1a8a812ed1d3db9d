# syntax=docker/dockerfile:1
# The OTN service: `docker build -t otn-service .`, then `docker run -p 3000:3000 -e API_KEYS=... otn-service`
# (docs/OPERATIONS.md; docker-compose.yml runs it with Postgres).
#
# Node.js is pinned to an LTS release. Tested: the suite runs on Node.js 20 in CI (the floor in
# package.json's engines); the app, server, start-up, lock, Docker, ops and demo tests passed on this
# pin, 24.21.0. The image is not built in CI (no Docker engine there): test/dockerfile.test.ts checks
# it by construction and runs its health check.
ARG NODE_VERSION=24.21.0

# Build stage: compile TypeScript with the dev dependencies, and write the empty embedded database
# new data folders start from. No install scripts: `prepare` would build before the sources are here.
FROM node:${NODE_VERSION}-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY migrations ./migrations
RUN npm run build

# Runtime stage: production dependencies and the compiled output only, as a non-root user.
FROM node:${NODE_VERSION}-slim AS runtime
# tini as PID 1: passes SIGTERM/SIGINT on to Node (graceful shutdown) and reaps exited children.
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    PGLITE_DATA_DIR=/data/pglite
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 3000
# Liveness through bash's /dev/tcp: no new Node process every 15 s.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-3000} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 status <&3 && [[ $status == *' 200 '* ]]"]
ENTRYPOINT ["tini", "--"]
# Migrations and the job queue's schema, before starting instances (the service also runs them at start):
#   docker run --rm -e DATABASE_URL=postgres://... otn-service node dist/src/cli/migrate.js
CMD ["node", "dist/src/server.js"]
