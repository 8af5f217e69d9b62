#!/usr/bin/env bash
# A throwaway PostgreSQL for pgring's integration tests and quick start.
#
#   scripts/pg-throwaway.sh start DIR PORT   create a fresh cluster in DIR, listening on 127.0.0.1:PORT
#   scripts/pg-throwaway.sh stop DIR         stop it (fast) and delete DIR
#
# DIR is the data directory itself; the server's socket is in DIR and its logs in DIR/log.
# Run as root, DIR is handed to the `postgres` OS user and every PostgreSQL command runs as that
# user (PostgreSQL refuses to run as root); run as anyone else, everything runs as that user.
# Nothing here touches a system cluster: PostgreSQL's binaries are used directly.
#
# Roles and databases created (the tests rely on these):
#   app          LOGIN PASSWORD 'secret' (SCRAM)      database app, owned by app
#   pgring_scram LOGIN PASSWORD 'scram_pw'  (SCRAM)   pg_hba: scram-sha-256 over TCP
#   pgring_md5   LOGIN PASSWORD 'md5_pw'    (MD5)     pg_hba: md5 over TCP
#   pgring_plain LOGIN PASSWORD 'plain_pw'            pg_hba: password (cleartext) over TCP
#   pgring_tls   LOGIN PASSWORD 'tls_pw'              pg_hba: scram-sha-256 over TLS only
#   pgring_cert  LOGIN                                pg_hba: cert (DIR/tls/pgring_cert.crt) over TLS only
#   database pgring_test (owner postgres, usable by everyone); every other TCP login: trust
set -euo pipefail

SCRIPT_DIR=$(dirname "$(readlink -f "$0")")
MARKER=.pgring-throwaway   # written into DIR so `start`/`stop` only ever delete their own clusters

die() {
  echo "pg-throwaway: error: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start DIR PORT | stop DIR" >&2
  exit 2
}

# Newest PostgreSQL installed under /usr/lib/postgresql/<version>/bin.
find_pg_bin() {
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]] ||
    die "no PostgreSQL server found in /usr/lib/postgresql/*/bin (run scripts/deps.sh)"
  echo "$dir"
}

# As root every PostgreSQL command runs as the postgres OS user; otherwise as ourselves.
if [[ $EUID -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user (run scripts/deps.sh)"
  AS_PG=(runuser -u postgres --)
else
  AS_PG=()
fi

pg() { "${AS_PG[@]}" "$@"; }

# Print the tail of the server's logs (called on failure).
log_tail() {
  local dir=$1 f
  for f in "$dir/log/pg_ctl.log" "$dir/log/postgresql.log"; do
    if [[ -s "$f" ]]; then
      echo "----- last lines of $f -----" >&2
      tail -n 40 "$f" >&2
    fi
  done
}

# Is a cluster running in DIR? (pg_ctl status: 0 running, 3 not running, 4 no data directory)
is_running() {
  local dir=$1
  [[ -f "$dir/postmaster.pid" ]] || return 1
  pg "$PG_BIN/pg_ctl" status -D "$dir" >/dev/null 2>&1
}

# Only delete what this script created: an empty directory, a data directory, or a marked one.
safe_remove() {
  local dir=$1
  [[ -e "$dir" ]] || return 0
  [[ -d "$dir" ]] || die "$dir exists and is not a directory"
  if [[ -n "$(ls -A "$dir")" && ! -f "$dir/$MARKER" && ! -f "$dir/PG_VERSION" ]]; then
    die "$dir is not empty and is not a throwaway cluster; refusing to delete it"
  fi
  rm -rf -- "$dir"
}

stop_cluster() {
  local dir=$1
  if is_running "$dir"; then
    pg "$PG_BIN/pg_ctl" stop -D "$dir" -m fast -w -t 30 >/dev/null 2>&1 ||
      pg "$PG_BIN/pg_ctl" stop -D "$dir" -m immediate -w -t 30 >/dev/null 2>&1 ||
      echo "pg-throwaway: warning: could not stop the cluster in $dir" >&2
  fi
}

# Succeeds if something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

psql_setup() {
  local port=$1 db=$2
  pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db"
}

# DIR may be a symlink to the real data directory in /tmp (see cmd_start). Prints the real one.
data_dir_of() {
  local dir=$1
  if [[ -L "$dir" ]]; then
    readlink -f -- "$dir"
  else
    echo "$dir"
  fi
}

# Stop and delete whatever cluster DIR holds (directly or through a symlink), and DIR itself.
remove_cluster() {
  local dir=$1 data
  data=$(data_dir_of "$dir")
  if is_running "$data"; then
    echo "pg-throwaway: stopping the cluster running in $data"
    stop_cluster "$data"
  fi
  safe_remove "$data"
  [[ -L "$dir" ]] && rm -f -- "$dir"
  return 0
}

cmd_start() {
  local dir=$1 port=$2
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "bad port: $port"
  fi
  [[ "$dir" == /* ]] || dir="$PWD/$dir"
  # PostgreSQL commands may run as another user: never depend on the caller's working directory.
  cd /

  # A cluster left running in DIR by a crashed run: stop it and start over.
  remove_cluster "$dir"
  if port_in_use "$port"; then
    die "port $port on 127.0.0.1 is already in use by another program"
  fi

  local parent data=$dir
  parent=$(dirname "$dir")
  mkdir -p -- "$parent"
  if [[ $EUID -eq 0 ]] && ! runuser -u postgres -- test -x "$parent"; then
    # The postgres OS user cannot reach DIR (e.g. the checkout is under /root): keep the data
    # in /tmp and leave a symlink at DIR, so callers still find the cluster through DIR.
    data=$(mktemp -d /tmp/pgring-pg.XXXXXX)
    ln -s -- "$data" "$dir"
    echo "pg-throwaway: postgres cannot reach $parent; data directory is $data (symlinked from $dir)"
  fi
  dir=$data

  mkdir -p -- "$dir"
  chmod 0700 "$dir"
  if [[ $EUID -eq 0 ]]; then
    chown postgres: "$dir"
    runuser -u postgres -- test -w "$dir" ||
      die "the postgres OS user cannot write to $dir"
  fi

  local initdb_log
  initdb_log=$(mktemp)
  if ! pg "$PG_BIN/initdb" -D "$dir" -A trust -U postgres --no-sync -E UTF8 --locale=C >"$initdb_log" 2>&1; then
    cat "$initdb_log" >&2
    rm -f "$initdb_log"
    die "initdb failed in $dir"
  fi
  rm -f "$initdb_log"
  pg touch "$dir/$MARKER"
  pg mkdir -p "$dir/log"

  # TLS for tests of tls.server: a throwaway CA ($dir/tls/ca.crt) and a certificate for
  # localhost / 127.0.0.1 (not 127.0.0.2: a host name mismatch to test verify-full with), and
  # a client certificate for pgring_cert (tls.server.cert/key: pgring's own certificate login).
  "$SCRIPT_DIR/gen-test-certs.sh" "$dir/tls" pgring_cert >/dev/null
  chmod 0755 "$dir/tls"
  chmod 0644 "$dir/tls/ca.crt"
  [[ $EUID -eq 0 ]] && chown -R postgres: "$dir/tls"

  # The socket path (DIR/.s.PGSQL.PORT) must fit in sun_path (107 bytes); otherwise TCP only.
  local sockdir=$dir
  if (( ${#dir} + 20 > 107 )); then
    echo "pg-throwaway: warning: $dir is too long for a unix socket path; listening on TCP only" >&2
    sockdir=""
  fi

  pg tee -a "$dir/postgresql.conf" >/dev/null <<EOF

# ---- pgring throwaway cluster (scripts/pg-throwaway.sh) ----
listen_addresses = '127.0.0.1,127.0.0.2'
port = $port
ssl = on
ssl_cert_file = 'tls/server.crt'
ssl_key_file = 'tls/server.key'
ssl_ca_file = 'tls/ca.crt'
unix_socket_directories = '$sockdir'
max_connections = 400
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
logging_collector = on
log_directory = 'log'
log_filename = 'postgresql.log'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
# Replication connections through pgring (test_replication.py): pg_receivewal and logical
# decoding.
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
EOF

  pg tee "$dir/pg_hba.conf" >/dev/null <<'EOF'
# pgring throwaway cluster: TYPE DATABASE USER ADDRESS METHOD
local all all                      trust
host  replication all   127.0.0.1/32 trust
hostssl   all pgring_tls 127.0.0.0/8 scram-sha-256
hostnossl all pgring_tls 127.0.0.0/8 reject
hostssl   all pgring_cert 127.0.0.0/8 cert
hostnossl all pgring_cert 127.0.0.0/8 reject
host  all pgring_md5   127.0.0.1/32 md5
host  all pgring_scram 127.0.0.1/32 scram-sha-256
host  all pgring_plain 127.0.0.1/32 password
host  all all          127.0.0.1/32 trust
host  all all          127.0.0.2/32 trust
EOF

  if ! pg "$PG_BIN/pg_ctl" start -D "$dir" -l "$dir/log/pg_ctl.log" -w -t 60 >/dev/null; then
    log_tail "$dir"
    die "PostgreSQL did not start in $dir on port $port"
  fi

  local i
  for ((i = 0; i < 120; i++)); do
    pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres && break
    sleep 0.5
  done
  if ! pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres; then
    log_tail "$dir"
    die "PostgreSQL in $dir is not accepting connections on port $port"
  fi

  # Idempotent: safe to run again against an existing cluster.
  if ! psql_setup "$port" postgres <<'SQL'
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['app', 'pgring_scram', 'pgring_md5', 'pgring_plain', 'pgring_tls', 'pgring_cert'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I LOGIN', r);
    END IF;
  END LOOP;
END $$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE app LOGIN PASSWORD 'secret';
ALTER ROLE pgring_scram LOGIN PASSWORD 'scram_pw';
ALTER ROLE pgring_plain LOGIN PASSWORD 'plain_pw';
ALTER ROLE pgring_tls LOGIN PASSWORD 'tls_pw';
SET password_encryption = 'md5';
ALTER ROLE pgring_md5 LOGIN PASSWORD 'md5_pw';
RESET password_encryption;
SELECT 'CREATE DATABASE app OWNER app'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'app') \gexec
SELECT 'CREATE DATABASE pgring_test OWNER postgres'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'pgring_test') \gexec
GRANT ALL ON DATABASE pgring_test TO PUBLIC;
SQL
  then
    log_tail "$dir"
    die "creating roles and databases failed"
  fi
  if ! psql_setup "$port" pgring_test <<<'GRANT ALL ON SCHEMA public TO PUBLIC;'; then
    log_tail "$dir"
    die "granting schema public in pgring_test failed"
  fi

  echo "pg-throwaway: PostgreSQL $("$PG_BIN/postgres" -V | awk '{print $3}') running in $dir on 127.0.0.1:$port"
}

cmd_stop() {
  local dir=$1
  [[ "$dir" == /* ]] || dir="$PWD/$dir"
  cd /
  if [[ ! -e "$dir" && ! -L "$dir" ]]; then
    echo "pg-throwaway: nothing to stop in $dir"
    return 0
  fi
  remove_cluster "$dir"
  echo "pg-throwaway: stopped and removed $dir"
}

[[ $# -ge 1 ]] || usage
PG_BIN=$(find_pg_bin)
case "$1" in
  start)
    [[ $# -eq 3 ]] || usage
    cmd_start "$2" "$3"
    ;;
  stop)
    [[ $# -eq 2 ]] || usage
    cmd_stop "$2"
    ;;
  *) usage ;;
esac
