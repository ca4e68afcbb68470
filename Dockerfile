# pgbranch with its embedded PostgreSQL 18, and the branch page on the admin port.
#   docker build -t pgbranch .
#   docker run -p 6432:6432 -v pgbranch:/data -e PGBRANCH_PASSWORD=secret pgbranch
# Connect from the host at 127.0.0.1:6432 (the banner says so: inside, pgbranch listens on every
# interface). Metrics are served on every interface of the container, so publishing the port is
# enough; keep it on the host's loopback, as they need no token:
#   docker run ... -p 127.0.0.1:9930:9930 pgbranch      then  curl http://127.0.0.1:9930/metrics
# The admin API and the branch page listen inside the container only, unless given a token:
#   docker run ... -p 127.0.0.1:9931:9931 -e PGBRANCH_ADMIN_HOST=0.0.0.0 -e PGBRANCH_ADMIN_TOKEN=... pgbranch
#   then open http://127.0.0.1:9931/ (it asks for the token once), or from a checkout on the host:
#   PGBRANCH_ADMIN_TOKEN=... npx pgbranch branch list
# or, without publishing it, from inside:
#   docker exec <container> npx pgbranch branch list
#
# The volume /data holds the embedded server's data directory, the branches and pgbranch's state.
# Branches are copy-on-write clones (milliseconds, no disk) only where /data is on a filesystem
# with reflinks: XFS made with reflink=1 (mkfs.xfs's default since xfsprogs 5.1) or btrfs. Docker's
# own volumes live on the host's /var/lib/docker filesystem; to choose, bind-mount a directory of
# such a filesystem, or make a volume on a block device:
#   docker run ... -v /mnt/xfs/pgbranch:/data pgbranch             (a directory on an XFS mount)
#   docker volume create --driver local --opt type=xfs --opt device=/dev/sdb1 pgbranch
# Elsewhere (ext4, overlayfs) branches are full copies; the banner's branches: line says which.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY web ./web
# dist/ (the server) and dist/web (the branch page, bundled by esbuild: no CDN, works offline).
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
# PostgreSQL refuses to run as root: the image runs as the unprivileged node user (uid 1000).
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
EXPOSE 6432 9930 9931
# Healthy while the admin API's /readyz answers 200 (no token needed): pgbranch takes clients and
# its server answers. It is 503 while pgbranch stops or its server is down, and nothing answers
# before the start is done. The first start initialises PostgreSQL: give it a minute.
# `pgbranch health` reads the settings the server reads (PGBRANCH_* variables, the config file in
# /app or PGBRANCH_CONFIG; give settings that way, not as flags to CMD, so both see them) and asks
# on the container's loopback, over HTTPS when the admin API serves HTTPS (admin.tls, or tls.cert
# with admin.host beyond loopback). With the admin API turned off (PGBRANCH_ADMIN_ENABLED=false),
# run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["node", "dist/main.js", "health"]
STOPSIGNAL SIGINT
CMD ["node", "dist/main.js"]
