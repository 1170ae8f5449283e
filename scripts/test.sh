#!/usr/bin/env bash
# `npm test`: installs or starts what the suite needs beyond `npm ci`, then runs it with vitest
# (all of it, or the files given: `npm test -- test/unit/config.test.ts`). Writes
# test-results/vitest.json for the "N passed, N failed" line of .ci/run.
#   - Debian packages: nginx (test/e2e), prometheus with promtool (test/integration/prometheus.test.ts),
#     unzip (the helm binary of test/deploy; helm.ts has a slower fallback), pgbouncer
#     (test/integration/pgbouncer.test.ts). Installed when running
#     as root with apt-get; otherwise one line says what to install.
#   - Postgres on 127.0.0.1:5432 and Redis on 127.0.0.1:6379, started when installed but stopped
#     (scripts/ensure-services.sh), unless TEST_DATABASE_URL and TEST_REDIS_URL name others.
set -uo pipefail
cd "$(dirname "$0")/.."

# A fresh clone: the dependencies first (npm ci also builds dist/, which some tests run).
[ -d node_modules ] || npm ci --no-audit --no-fund || exit 1

missing=()
command -v nginx >/dev/null || missing+=(nginx)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
command -v unzip >/dev/null || missing+=(unzip)
{ command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; } || missing+=(pgbouncer)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "ryvion-authz tests: installing ${missing[*]} (Debian packages)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
      || echo "ryvion-authz tests: could not install ${missing[*]}; the tests that need them fail saying so"
  else
    echo "ryvion-authz tests: install ${missing[*]} first (Debian: sudo apt-get install -y --no-install-recommends ${missing[*]}); the tests that need them fail without"
  fi
fi

bash scripts/ensure-services.sh

rm -f test-results/vitest.json
exec npx vitest run --reporter=default --reporter=json --outputFile.json=test-results/vitest.json "$@"
