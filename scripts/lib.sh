# shellcheck shell=bash
# Helpers shared by scripts/test.sh and scripts/dev.sh. Source it; it does
# nothing by itself except define functions and a few variables.
#
#   ensure_tools                 postgres binaries + the pinned Python tools venv
#   start_postgres [--fast] DIR PORT
#                                private cluster in DIR (reused if running),
#                                exports DATABASE_URL
#   stop_postgres DIR
#   start_moto PORT / stop_moto  moto_server (S3/SQS API) in the background
#   free_port                    prints a free TCP port on 127.0.0.1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="$REPO/.tools"
VENV="$TOOLS_DIR/venv"

# The Python tools, pinned. Bump together and the venv is refreshed on the
# next run (the stamp file below records what is installed).
PIP_PINS=(
  "moto[server]==5.2.5"
  "cfn-lint==1.58.0"
  "aws-sam-cli==1.170.0"
  "cargo-lambda==1.9.2"
)

# The unprivileged OS user that runs Postgres when we are root.
PG_OS_USER="${LEDGERLINE_PG_OS_USER:-ledgerline}"

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------

# Directory holding initdb/pg_ctl/postgres/psql, or empty.
pg_bindir() {
  local d
  while read -r d; do
    if [[ -x "$d/initdb" ]]; then
      echo "$d"
      return 0
    fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  if command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return 0
  fi
  return 1
}

ensure_postgres() {
  if ! PG_BIN="$(pg_bindir)"; then
    if [[ $EUID -ne 0 ]]; then
      die "Postgres server binaries (initdb) not found; install Debian's 'postgresql' package"
    fi
    log "installing postgresql (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    PG_BIN="$(pg_bindir)" || die "initdb still missing after installing postgresql"
  fi
  export PG_BIN
}

ensure_venv() {
  local stamp="$VENV/.ledgerline-pins" want
  want="$(printf '%s\n' "${PIP_PINS[@]}")"
  # A venv whose interpreter has gone (Python upgraded or removed) is rebuilt.
  if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "python venv at $VENV is broken; recreating"
    rm -rf "$VENV"
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating python venv at $VENV"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$VENV"
  fi
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && [[ -x "$VENV/bin/moto_server" && -x "$VENV/bin/cfn-lint" && -x "$VENV/bin/sam" && -x "$VENV/bin/cargo-lambda" ]]; then
    :
  else
    log "installing python tools: ${PIP_PINS[*]}"
    local t0=$SECONDS
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PINS[@]}"
    printf '%s\n' "$want" >"$stamp"
    log "python tools installed in $((SECONDS - t0))s"
  fi
  case ":$PATH:" in
    *":$VENV/bin:"*) ;;
    *) export PATH="$VENV/bin:$PATH" ;;
  esac
  # sam must not try to phone home (there is no network but package registries).
  export SAM_CLI_TELEMETRY=0
}

ensure_tools() {
  ensure_postgres
  ensure_venv
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- postgres ----------------------------------------------------------------

# Runs a command as the OS user that owns the cluster: the unprivileged
# $PG_OS_USER when we are root (Postgres refuses to run as root), else us.
# From / so that an unreadable working directory does not bother pg_ctl.
as_pg_user() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    (cd / && "$@")
  fi
}

ensure_pg_os_user() {
  [[ $EUID -eq 0 ]] || return 0
  if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    log "creating system user $PG_OS_USER (runs Postgres)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
}

# Creates DIR (if needed) owned by the user that runs Postgres, and checks that
# user can really use it (every parent must be traversable).
prepare_pg_dir() {
  local dir="$1"
  mkdir -p "$dir"
  if [[ $EUID -eq 0 ]]; then
    chown "$PG_OS_USER:" "$dir"
  fi
  chmod 700 "$dir"
  if ! as_pg_user test -w "$dir" -a -x "$dir"; then
    die "user $(if [[ $EUID -eq 0 ]]; then echo "$PG_OS_USER"; else id -un; fi) cannot write $dir (is a parent directory private?); set LEDGERLINE_PG_DIR to a directory under /tmp or /var/tmp"
  fi
}

pg_running() {
  local dir="$1"
  [[ -f "$dir/postmaster.pid" ]] || return 1
  as_pg_user "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1
}

# start_postgres [--fast] [--tls] DIR PORT
#   --fast: fsync/synchronous_commit/full_page_writes off (tests only: a crash
#   can corrupt the cluster). Without it the cluster is durable.
#   --tls: TLS on as well as plaintext, with a certificate from a throwaway
#   CA (pg_tls_files); exports LEDGERLINE_PG_CA, that CA's certificate.
# Exports DATABASE_URL, LEDGERLINE_PG_PORT and LEDGERLINE_PG_DATA.
start_postgres() {
  local fast=0 tls=0
  while [[ "${1:-}" == --* ]]; do
    case "$1" in
      --fast) fast=1 ;;
      --tls) tls=1 ;;
      *) die "start_postgres: unknown option $1" ;;
    esac
    shift
  done
  local dir="${1:?start_postgres [--fast] [--tls] DIR PORT}" port="${2:?start_postgres [--fast] [--tls] DIR PORT}"
  [[ -n "${PG_BIN:-}" ]] || ensure_postgres
  ensure_pg_os_user

  if pg_running "$dir"; then
    # Line 4 of postmaster.pid is the port the running server listens on.
    local running_port
    running_port="$(sed -n 4p "$dir/postmaster.pid")"
    if [[ "$running_port" != "$port" ]]; then
      warn "cluster in $dir is already running on port $running_port (not $port); using it"
      port="$running_port"
    fi
    log "reusing running Postgres in $dir on port $port"
  else
    prepare_pg_dir "$dir"
    if [[ ! -f "$dir/PG_VERSION" ]]; then
      log "initdb $dir"
      local initdb_log
      initdb_log="$(mktemp "${TMPDIR:-/tmp}/ledgerline-initdb.XXXXXX")"
      if ! as_pg_user "$PG_BIN/initdb" -D "$dir" --username=ledgerline --auth=trust \
        --encoding=UTF8 --no-locale >"$initdb_log" 2>&1; then
        cat "$initdb_log" >&2
        rm -f "$initdb_log"
        die "initdb failed for $dir"
      fi
      rm -f "$initdb_log"
      cat >"$dir/pg_hba.conf" <<'EOF'
# Private development/test cluster: trust on the unix socket (in the data
# directory) and on loopback only.
local   all  all                trust
host    all  all  127.0.0.1/32  trust
host    all  all  ::1/128       trust
EOF
      echo "include_if_exists = 'ledgerline.conf'" >>"$dir/postgresql.conf"
      if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER:" "$dir/pg_hba.conf"; fi
    fi
    if ((tls)); then
      pg_tls_files "$dir/tls"
    fi
    # Rewritten on every start, so port and durability follow the caller.
    local sockdir="$dir"
    # A unix socket path is limited to ~107 bytes; skip the socket if too long.
    if ((${#dir} > 90)); then
      sockdir=""
    fi
    {
      echo "# Written by scripts/lib.sh start_postgres on each start."
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $port"
      echo "unix_socket_directories = '$sockdir'"
      echo "max_connections = 300"
      echo "logging_collector = off"
      if ((fast)); then
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      else
        echo "fsync = on"
        echo "synchronous_commit = on"
        echo "full_page_writes = on"
      fi
      if ((tls)); then
        echo "ssl = on"
        echo "ssl_cert_file = '$dir/tls/server.crt'"
        echo "ssl_key_file = '$dir/tls/server.key'"
      fi
    } >"$dir/ledgerline.conf"
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER:" "$dir/ledgerline.conf"; fi
    log "starting Postgres in $dir on 127.0.0.1:$port$( ((fast)) && echo ' (fast, non-durable)')"
    if ! as_pg_user "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null; then
      tail -n 30 "$dir/server.log" >&2 || true
      die "Postgres did not start (log: $dir/server.log)"
    fi
  fi

  local i
  for ((i = 0; i < 60; i++)); do
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; then
      break
    fi
    sleep 0.5
  done
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" || die "Postgres on port $port is not ready"

  # The bootstrap superuser is already called ledgerline (initdb --username);
  # this also covers a cluster made some other way.
  local psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port")
  "${psql[@]}" -U ledgerline -d postgres >/dev/null 2>&1 -c 'SELECT 1' \
    || "${psql[@]}" -U "$PG_OS_USER" -d postgres -c \
      "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledgerline') THEN CREATE ROLE ledgerline LOGIN SUPERUSER; END IF; END \$\$;" \
    || die "could not create role ledgerline"
  if [[ "$("${psql[@]}" -U ledgerline -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'ledgerline'")" != 1 ]]; then
    "${psql[@]}" -U ledgerline -d postgres -c 'CREATE DATABASE ledgerline OWNER ledgerline' \
      || die "could not create database ledgerline"
  fi

  export LEDGERLINE_PG_DATA="$dir" LEDGERLINE_PG_PORT="$port"
  if ((tls)); then
    # The CA that signed the server's certificate (for sslrootcert=).
    export LEDGERLINE_PG_CA="$dir/tls/ca.pem"
  fi
  export DATABASE_URL="postgres://ledgerline@127.0.0.1:$port/ledgerline"
  log "DATABASE_URL=$DATABASE_URL"
}

# A throwaway CA and a server certificate it signed for localhost and
# 127.0.0.1, in DIR (kept while it has a day to run), readable by the
# Postgres user.
pg_tls_files() {
  local dir="${1:?pg_tls_files DIR}"
  if [[ -f "$dir/ca.pem" && -f "$dir/server.crt" ]] \
    && openssl x509 -checkend 86400 -noout -in "$dir/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  command -v openssl >/dev/null || die "openssl is needed to make the test cluster's TLS certificate"
  mkdir -p "$dir"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 7 -subj "/CN=Ledgerline test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null || die "could not make the test CA"
  openssl req "${ec[@]}" -subj "/CN=localhost" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null || die "could not make the server key"
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 7 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null \
    || die "could not sign the server certificate"
  rm -f "$dir/ca.key" "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
  chmod 600 "$dir/server.key"
  if [[ $EUID -eq 0 ]]; then chown -R "$PG_OS_USER:" "$dir"; fi
  chmod 755 "$dir"
  chmod 644 "$dir/ca.pem" "$dir/server.crt"
}

stop_postgres() {
  local dir="${1:?stop_postgres DIR}"
  [[ -n "${PG_BIN:-}" ]] || PG_BIN="$(pg_bindir)" || return 0
  if pg_running "$dir"; then
    log "stopping Postgres in $dir"
    as_pg_user "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 30 stop >/dev/null \
      || as_pg_user "$PG_BIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null \
      || warn "could not stop Postgres in $dir"
  fi
}

# --- moto (S3/SQS API) -------------------------------------------------------

MOTO_PID=""
MOTO_LOG=""

start_moto() {
  local port="${1:?start_moto PORT}"
  command -v moto_server >/dev/null 2>&1 || die "moto_server not on PATH (run ensure_tools)"
  MOTO_LOG="$(mktemp "${TMPDIR:-/tmp}/ledgerline-moto.XXXXXX")"
  log "starting moto_server on 127.0.0.1:$port"
  moto_server -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
  MOTO_PID=$!
  local i
  for ((i = 0; i < 120; i++)); do
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      cat "$MOTO_LOG" >&2
      MOTO_PID=""
      die "moto_server exited during start-up"
    fi
    # Any HTTP answer (even an error status) means it is serving.
    if python3 - "$port" <<'EOF' 2>/dev/null; then
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=1)
except urllib.error.HTTPError:
    pass
EOF
      export MOTO_PORT="$port"
      return 0
    fi
    sleep 0.25
  done
  cat "$MOTO_LOG" >&2
  stop_moto
  die "moto_server did not answer on port $port within 30s"
}

stop_moto() {
  if [[ -n "$MOTO_PID" ]] && kill -0 "$MOTO_PID" 2>/dev/null; then
    log "stopping moto_server (pid $MOTO_PID)"
    kill "$MOTO_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 20; i++)); do
      kill -0 "$MOTO_PID" 2>/dev/null || break
      sleep 0.25
    done
    kill -9 "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  MOTO_PID=""
  if [[ -n "$MOTO_LOG" ]]; then
    rm -f "$MOTO_LOG"
    MOTO_LOG=""
  fi
}
