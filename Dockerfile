# pgbranch with its embedded PostgreSQL 18. Data lives in the /data volume.
#   docker build -t pgbranch .
#   docker run -p 6432:6432 -v pgbranch:/data -e PGBRANCH_PASSWORD=secret pgbranch
# The admin API listens inside the container only, unless given a token:
#   docker run ... -p 9931:9931 -e PGBRANCH_ADMIN_HOST=0.0.0.0 -e PGBRANCH_ADMIN_TOKEN=... pgbranch
#   docker exec <container> node dist/main.js branch list
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
USER node
ENV PGBRANCH_DATA_DIR=/data \
    PGBRANCH_HOST=0.0.0.0 \
    PGBRANCH_LOG_FORMAT=json
VOLUME /data
EXPOSE 6432
STOPSIGNAL SIGINT
CMD ["node", "dist/main.js"]
