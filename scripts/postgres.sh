#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback (installing Debian's package if needed)
# for the distributed-search test, and print its URL. Idempotent: a running server is reused.
# No fsync: a throwaway test server needs no durability, and slow commits would stall workers.
#   export AUTOLAYER_TEST_POSTGRES=$(bash scripts/postgres.sh)
set -euo pipefail
DIR=${AUTOLAYER_PG_DIR:-/tmp/autolayer-pg}
PORT=${AUTOLAYER_PG_PORT:-55432}
URL="postgresql://autolayer@127.0.0.1:$PORT/autolayer"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(bindir)" ]; then
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; }) >&2
fi
BIN=$(bindir)
# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! as_owner "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
  if [ ! -f "$DIR/PG_VERSION" ]; then
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    as_owner "$BIN/initdb" -D "$DIR" -A trust -U autolayer >&2
  fi
  as_owner "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off -c synchronous_commit=off" start >&2
fi
"$BIN/psql" -h 127.0.0.1 -p "$PORT" -U autolayer -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='autolayer'" | grep -q 1 ||
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U autolayer autolayer
echo "$URL"
