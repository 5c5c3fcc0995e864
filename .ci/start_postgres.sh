#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the storage tests and print its URL.
# Installs the server from the distribution's packages when it is missing.
set -euo pipefail
PORT="${PGPORT_TEST:-$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
fi
BIN="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)")"
DATA="$(mktemp -d /tmp/autotune-pg.XXXXXX)"
RUNAS=()
if [ "$(id -u)" = "0" ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home "$DATA" postgres
  chown -R postgres "$DATA"
  RUNAS=(runuser -u postgres --)
fi
"${RUNAS[@]}" "$BIN/initdb" -D "$DATA/db" -U postgres --auth=trust -E UTF8 >/dev/null
"${RUNAS[@]}" "$BIN/pg_ctl" -D "$DATA/db" -l "$DATA/log" -w \
  -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1" start >/dev/null
"$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE autotune_test" >/dev/null
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/autotune_test"
