#!/usr/bin/env bash
# Makes sure the Postgres and Redis the tests default to are answering. On the
# project's machines both run before CI starts; this only starts them (with the
# machine's own commands) when they are installed but stopped. Tests given
# TEST_DATABASE_URL / TEST_REDIS_URL do not need this.
set -uo pipefail

if [ -n "${TEST_DATABASE_URL:-}" ] && [ -n "${TEST_REDIS_URL:-}" ]; then exit 0; fi

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if [ -z "${TEST_DATABASE_URL:-}" ] && ! pg_up && command -v pg_ctlcluster >/dev/null; then
  echo "starting the local PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 0.5; done
fi
if [ -z "${TEST_REDIS_URL:-}" ] && ! redis_up && command -v redis-server >/dev/null; then
  echo "starting the local Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /tmp || true
  for _ in $(seq 1 30); do redis_up && break; sleep 0.2; done
fi
# The test set-up says in one line what is missing when something still does not answer.
exit 0
