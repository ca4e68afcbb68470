# pgbranch with its embedded PostgreSQL 18. Data lives in the /data volume.
#   docker build -t pgbranch .
#   docker run -p 6432:6432 -v pgbranch:/data -e PGBRANCH_PASSWORD=secret pgbranch
# Connect from the host at 127.0.0.1:6432 (the banner says so: inside, pgbranch listens on every
# interface). Metrics are served on every interface of the container, so publishing the port is
# enough; keep it on the host's loopback, as they need no token:
#   docker run ... -p 127.0.0.1:9930:9930 pgbranch      then  curl http://127.0.0.1:9930/metrics
# The admin API listens inside the container only, unless given a token:
#   docker run ... -p 127.0.0.1:9931:9931 -e PGBRANCH_ADMIN_HOST=0.0.0.0 -e PGBRANCH_ADMIN_TOKEN=... pgbranch
#   PGBRANCH_ADMIN_TOKEN=... npx pgbranch branch list     (from a checkout on the host)
# or, without publishing it, from inside:
#   docker exec <container> npx pgbranch branch list
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
# PostgreSQL refuses to run as root: the image runs as the unprivileged node user.
RUN mkdir /data && chown node:node /data
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# bin/pgbranch.js runs dist/ (there are no sources here), so `npx pgbranch ...` works in /app.
COPY bin ./bin
USER node
ENV PGBRANCH_DATA_DIR=/data \
    PGBRANCH_HOST=0.0.0.0 \
    PGBRANCH_METRICS_HOST=0.0.0.0 \
    PGBRANCH_LOG_FORMAT=json
VOLUME /data
EXPOSE 6432 9930
# Healthy once the admin API answers /healthz (no token needed), which it serves only after the
# server is up and the proxy listens. The first start initialises PostgreSQL: give it a minute.
# With the admin API turned off (PGBRANCH_ADMIN_ENABLED=false), run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PGBRANCH_ADMIN_PORT || 9931) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
STOPSIGNAL SIGINT
CMD ["node", "dist/main.js"]
