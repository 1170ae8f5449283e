# syntax=docker/dockerfile:1
# ryvion-authz container image.
#
#   docker build -t ryvion-authz:0.1.0 .
#   docker run --read-only -e DATABASE_URL=... -e KEY_PEPPER=... -p 9191:9191 -p 8080:8080 -p 9090:9090 ryvion-authz:0.1.0
#
# Two stages on the same official Node LTS base (Debian bookworm, slim):
#   build    installs every dependency and compiles src/ to dist/, the same commands as .ci/run
#            (`npm ci`, then the build that `npm ci` runs through `prepare`): tsc's output and the
#            esbuild bundle dist/bundle/ryvion-authz.cjs (esbuild.mjs) that bin/ryvion-authz.js
#            runs, with its source map and the V8 code cache the build writes by running it once
#            through bin/ryvion-authz.js (made by this stage's node, the same image as runtime's,
#            so the runtime takes it; a cache another Node made would be rejected, only slower);
#   runtime  production dependencies only, the compiled code and the files the package ships
#            (package.json "files": bin, dist, proto, migrations, policy), owned by root and run
#            as an unprivileged numeric user, so it works with a read-only root filesystem and
#            Kubernetes can verify runAsNonRoot.
# Node 20, the major every test runs on (test/deploy/dockerfile.test.ts holds the image to the
# suite's Node). package.json engines (^20.19 || ^22.13 || >=24) is what the dependencies need;
# only Node 20 is tested here. Pin the base by digest in your own registry if you need
# reproducible builds.

FROM node:20-bookworm-slim AS build
WORKDIR /src
# Dependencies first: this layer is reused while package*.json do not change.
COPY package.json package-lock.json ./
# --ignore-scripts: no dependency install scripts run; the build is the explicit step below
# (`prepare` in package.json runs the same `npm run build` in CI's `npm ci`).
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json esbuild.mjs ./
COPY src ./src
# bin/: the launcher that writes the bundle's code cache at the end of the build.
COPY bin ./bin
RUN npm run build

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only; no install scripts (none of them needs one), no npm cache left behind.
# The bundle holds most of them; it loads node-pg-migrate (`migrate`) and grpc-health-check's
# .proto from here.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
# dist/: tsc's output and dist/bundle/ (the bundle, its source map and its code cache).
COPY --from=build /src/dist ./dist
COPY bin ./bin
COPY proto ./proto
COPY migrations ./migrations
COPY policy ./policy

# Files stay owned by root (the process cannot change its own code); nothing is written at run
# time. 10001 has no passwd entry on purpose: a numeric UID lets Kubernetes check runAsNonRoot.
USER 10001:10001
# gRPC Check + health, HTTP key API, operations (/metrics, /healthz, /readyz).
EXPOSE 9191 8080 9090
# Exec form, no shell: node is PID 1 and receives SIGTERM itself; `serve` drains in-flight calls
# (SHUTDOWN_DRAIN_MS) and exits. Other commands run with the same entrypoint, e.g. `migrate`.
ENTRYPOINT ["node", "bin/ryvion-authz.js"]
CMD ["serve"]
# For `docker run` (Kubernetes uses the chart's probes instead): the operations port's /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.OPS_PORT||9090}/healthz`).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
