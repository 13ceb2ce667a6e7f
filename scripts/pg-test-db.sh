#!/usr/bin/env bash
# Make a local PostgreSQL usable for tests and hand out throwaway databases.
#
#   scripts/pg-test-db.sh [ensure]    start the server if needed, ensure the login role
#   scripts/pg-test-db.sh create NAME  ensure, then (re)create database NAME owned by the role
#   scripts/pg-test-db.sh drop NAME    drop database NAME (if it exists)
#
# Every command prints the connection info on stdout as KEY=VALUE lines
# (PGHOST, PGPORT, PGUSER, PGPASSWORD and, for create, PGDATABASE); logs go to stderr.
# It is idempotent: running it again changes nothing that is already in place.
#
# As root it uses the Debian cluster tools (pg_lsclusters / pg_ctlcluster) and the
# 'postgres' superuser over the local socket (peer auth). As any other user it cannot
# start a server: it then expects a server on PGTEST_HOST:PGTEST_PORT where the role
# already exists with CREATEDB, and only creates/drops databases through TCP.
#
# Settings (environment): PGTEST_HOST (127.0.0.1), PGTEST_PORT (5432),
# PGTEST_USER (tap_analytics_test), PGTEST_PASSWORD (tap_analytics_test: a local
# test-only role that can reach nothing but this machine's throwaway databases).
#
# Exit codes: 0 ok, 2 usage error, 3 PostgreSQL unavailable (tests skip or fail on it).
set -euo pipefail

HOST="${PGTEST_HOST:-127.0.0.1}"
PORT="${PGTEST_PORT:-5432}"
ROLE="${PGTEST_USER:-tap_analytics_test}"
PASSWORD="${PGTEST_PASSWORD:-tap_analytics_test}"

log() { echo "pg-test-db: $*" >&2; }
unavailable() { log "PostgreSQL unavailable: $*"; exit 3; }

valid_ident() { [[ "$1" =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# psql as the 'postgres' superuser through the local socket (root only).
su_psql() {
    (cd / && runuser -u postgres -- psql --no-psqlrc -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@")
}

# psql as the test role over TCP.
role_psql() {
    PGPASSWORD="$PASSWORD" PGOPTIONS="-c client_min_messages=warning" psql --no-psqlrc -X -q -v ON_ERROR_STOP=1 \
        -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres "$@"
}

wait_ready() {
    for _ in $(seq 1 60); do
        if pg_isready -q -h "$HOST" -p "$PORT"; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

start_server() {
    if pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; then
        return 0
    fi
    if ! is_root; then
        unavailable "no server answers on $HOST:$PORT and only root can start one here"
    fi
    if ! command -v pg_lsclusters >/dev/null 2>&1; then
        if [[ "${PGTEST_INSTALL:-0}" == 1 ]]; then
            log "installing the postgresql package"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
                || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; } \
                || unavailable "apt-get install postgresql failed"
        else
            unavailable "PostgreSQL server tools (pg_lsclusters) are not installed; set PGTEST_INSTALL=1 to apt-get install postgresql"
        fi
    fi
    local version cluster status
    # Columns: Ver Cluster Port Status Owner Data-directory Log-file
    read -r version cluster status < <(pg_lsclusters --no-header | awk -v p="$PORT" '$3 == p {print $1, $2, $4; exit}') || true
    if [[ -z "${version:-}" ]]; then
        if [[ -n "$(pg_lsclusters --no-header 2>/dev/null)" ]]; then
            unavailable "no cluster on port $PORT (pg_lsclusters lists others: set PGTEST_PORT)"
        fi
        version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
        [[ -n "$version" ]] || unavailable "no PostgreSQL version under /usr/lib/postgresql"
        log "creating cluster $version/main on port $PORT"
        pg_createcluster --port "$PORT" "$version" main >&2 || unavailable "pg_createcluster failed"
        cluster=main
        status=down
    fi
    if [[ "$status" != online ]]; then
        log "starting cluster $version/$cluster"
        pg_ctlcluster "$version" "$cluster" start >&2 || unavailable "pg_ctlcluster $version $cluster start failed"
    fi
    wait_ready || unavailable "server on $HOST:$PORT did not become ready"
}

ensure_role() {
    if is_root; then
        su_psql -v role="$ROLE" -v pw="$PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN CREATEDB PASSWORD %L', :'role', :'pw') \gexec
SQL
    fi
    role_psql -c 'SELECT 1' >/dev/null 2>&1 \
        || unavailable "role $ROLE cannot log in on $HOST:$PORT with the configured password"
}

print_info() {
    echo "PGHOST=$HOST"
    echo "PGPORT=$PORT"
    echo "PGUSER=$ROLE"
    echo "PGPASSWORD=$PASSWORD"
    if [[ -n "${1:-}" ]]; then
        echo "PGDATABASE=$1"
    fi
}

drop_sql() {
    "$@" -v db="$DROP_NAME" <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'db') \gexec
SQL
}

drop_db() {
    # WITH (FORCE) ends the sessions still on the database, but the role may end
    # only its own: an autovacuum worker busy on freshly loaded tables makes the
    # role's DROP fail now and then. As root the superuser drops it (it may end
    # any session); otherwise the role tries again once the worker is done.
    DROP_NAME="$1"
    if is_root; then
        drop_sql su_psql
        return
    fi
    local attempt
    for attempt in 1 2 3 4 5; do
        drop_sql role_psql && return
        log "could not drop $DROP_NAME yet (attempt $attempt); retrying"
        sleep 1
    done
    drop_sql role_psql
}

create_db() {
    drop_db "$1"
    role_psql -v db="$1" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db') \gexec
SQL
}

command="${1:-ensure}"
valid_ident "$ROLE" || { log "invalid role name: $ROLE"; exit 2; }
case "$command" in
    ensure)
        start_server
        ensure_role
        print_info
        ;;
    create)
        db="${2:-}"
        valid_ident "$db" || { log "usage: $0 create NAME (NAME: lowercase letters, digits, _)"; exit 2; }
        start_server
        ensure_role
        create_db "$db"
        log "created database $db"
        print_info "$db"
        ;;
    drop)
        db="${2:-}"
        valid_ident "$db" || { log "usage: $0 drop NAME"; exit 2; }
        start_server
        ensure_role
        drop_db "$db"
        log "dropped database $db"
        print_info
        ;;
    *)
        log "usage: $0 [ensure | create NAME | drop NAME]"
        exit 2
        ;;
esac
