#!/usr/bin/env bash
# Run by `npm run bench` before bench/run.ts: installs h2load (Debian's nghttp2-client) when it
# is missing, and makes sure the local Postgres and Redis answer (scripts/ensure-services.sh).
# BENCH_DATABASE_URL / BENCH_REDIS_URL point the bench elsewhere.
set -uo pipefail

if ! command -v h2load >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench: installing h2load (Debian package nghttp2-client)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client; } >&2 \
      || echo "bench: could not install nghttp2-client; bench/run.ts will say what is missing" >&2
  else
    echo "bench: h2load is missing: install Debian's nghttp2-client (as root: apt-get install nghttp2-client)" >&2
  fi
fi
if [ -z "${BENCH_DATABASE_URL:-}" ] || [ -z "${BENCH_REDIS_URL:-}" ]; then
  bash "$(dirname "$0")/../scripts/ensure-services.sh"
fi
exit 0
