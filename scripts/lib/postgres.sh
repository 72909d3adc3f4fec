# Sourced by scripts/server and scripts/test: a private PostgreSQL 15 cluster
# under a git-ignored folder, listening on loopback only.
#   pg_cluster_start DATA_DIR PORT [fast]   starts it (initialising on first use)
#   pg_cluster_stop DATA_DIR                stops it
#   pg_cluster_url DATA_DIR PORT DB         prints a connection URL (plain TCP)
# As root, the server runs as the `postgres` system user (initdb refuses root).
# The cluster also accepts TLS with a certificate for localhost/127.0.0.1
# signed by a CA of its own (DATA_DIR.ca.crt), as Supabase's databases are:
# the tests prove Keel verifies such a certificate against DATABASE_CA_CERT.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_cluster_url() {
  local data_dir=$1 port=$2 db=$3
  printf 'postgres://postgres:%s@127.0.0.1:%s/%s?sslmode=disable' "$(cat "$data_dir.password")" "$port" "$db"
}

# A private CA (DATA_DIR.ca.crt) and a server certificate it signed.
pg_cluster_tls() {
  local data_dir=$1 work
  work=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=keel local database CA" -keyout "$work/ca.key" -out "$data_dir.ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$data_dir/server.key" -out "$work/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext"
  openssl x509 -req -in "$work/server.csr" -CA "$data_dir.ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -days 3650 -extfile "$work/ext" -out "$data_dir/server.crt" 2>/dev/null
  rm -rf "$work"
  chmod 600 "$data_dir/server.key"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$data_dir/server.key" "$data_dir/server.crt"; fi
  {
    echo "ssl = on"
    echo "ssl_cert_file = 'server.crt'"
    echo "ssl_key_file = 'server.key'"
  } >>"$data_dir/postgresql.conf"
}

pg_cluster_start() {
  local data_dir=$1 port=$2 mode=${3:-}
  mkdir -p "$(dirname "$data_dir")"
  if [ ! -f "$data_dir/PG_VERSION" ]; then
    rm -rf "$data_dir"
    mkdir -p "$data_dir"
    [ -f "$data_dir.password" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$data_dir.password"
    chmod 600 "$data_dir.password"
    local pwfile
    pwfile=$(mktemp)
    cp "$data_dir.password" "$pwfile"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$data_dir" "$pwfile"; fi
    pg_as_owner "$PG_BIN/initdb" -D "$data_dir" -U postgres --auth=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $port"
      echo "unix_socket_directories = '$data_dir'"
      echo "max_connections = 300"
      echo "shared_buffers = 256MB"
      echo "maintenance_work_mem = 512MB"
      if [ "$mode" = fast ]; then
        # Throwaway test data: durability buys nothing, speed does.
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      fi
    } >>"$data_dir/postgresql.conf"
    pg_cluster_tls "$data_dir"
  fi
  if ! pg_as_owner "$PG_BIN/pg_ctl" -D "$data_dir" status >/dev/null 2>&1; then
    # The port asked for wins over the one a kept cluster was created with.
    pg_as_owner "$PG_BIN/pg_ctl" -D "$data_dir" -l "$data_dir/server.log" -o "-p $port" -w -t 30 start >/dev/null
  fi
}

pg_cluster_stop() {
  local data_dir=$1
  if [ -f "$data_dir/PG_VERSION" ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$data_dir" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

pg_create_database() {
  local data_dir=$1 port=$2 db=$3
  PGPASSWORD=$(cat "$data_dir.password") "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qtAc \
    "select 1 from pg_database where datname = '$db'" | grep -q 1 ||
    PGPASSWORD=$(cat "$data_dir.password") "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc \
      "create database \"$db\"" >/dev/null
}
