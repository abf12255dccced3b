#!/bin/sh
# docker/test/postgres-entrypoint.sh: entrypoint of docker/test/postgres.Dockerfile (the local stand-in for
# the official postgres image). First start: initdb with POSTGRES_USER / POSTGRES_PASSWORD, create
# POSTGRES_DB, run /docker-entrypoint-initdb.d/*.sql against it. Every start: exec postgres with the
# command's arguments (`postgres -c listen_addresses=127.0.0.1`); PGPORT, if set, is the port.
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 -D "$PGDATA" > /dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # A server on the unix socket only while initializing, so no client (or healthcheck on TCP) sees it.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -q -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$f" ] || continue
        echo "running $f"
        psql -v ON_ERROR_STOP=1 -q -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
    echo "database initialized in $PGDATA"
fi

if [ "${1:-postgres}" = postgres ]; then
    [ "$#" -gt 0 ] && shift
    exec postgres "$@"
fi
exec "$@"
