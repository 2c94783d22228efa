#!/usr/bin/env bash
# Start Debian's PostgreSQL for the project (installing it when missing and root), and make
# sure a login role exists for it. Idempotent. Prints two lines: a database URL for the
# role (database "postgres"), then "started" if this call started the cluster or
# "running" if it was already up — so a caller stops only what it started.
set -euo pipefail
ROLE=${SANDBOX_PG_ROLE:-sandbox}
PASSWORD=${SANDBOX_PG_PASSWORD:-sandbox}
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then echo "error: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION main"; then
  pg_createcluster "$VERSION" main >&2
fi
state=running
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $4}' | grep -q online; then
  # its notes ("Removed stale pid file.") go to stderr: stdout carries only the two lines
  pg_ctlcluster --skip-systemctl-redirect "$VERSION" main start >&2
  state=started
fi
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $3}')
psql_as_postgres() { su postgres -s /bin/sh -c "psql -X -q -p $PORT -tAc \"$1\""; }
if [ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname='$ROLE'")" != 1 ]; then
  psql_as_postgres "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD' CREATEDB" >/dev/null
fi
echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/postgres"
echo "$state"
