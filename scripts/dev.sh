#!/usr/bin/env bash
# Runs the whole system locally on embedded defaults: every endpoint on one
# port, workers and schedules in-process, blobs under .local/data.
#
#   scripts/dev.sh          start (Postgres if needed, migrate, bootstrap, serve)
#   scripts/dev.sh stop-db  stop the private Postgres cluster this script started
#
# Environment:
#   DATABASE_URL         use this database instead of a private cluster
#   LEDGERLINE_ADDR      listen address (default 127.0.0.1:8080)
#   LEDGERLINE_PG_PORT   port of the private cluster (default 54329)
#   LEDGERLINE_PG_DIR    data directory of the private cluster
#                        (default .local/pg, or /var/tmp/ledgerline-pg-PORT
#                        when the Postgres user cannot reach .local)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

LOCAL_DIR="$REPO/.local"
BOOTSTRAP_FILE="$LOCAL_DIR/bootstrap.json"
ADDR="${LEDGERLINE_ADDR:-127.0.0.1:8080}"
PG_PORT="${LEDGERLINE_PG_PORT:-54329}"

mkdir -p "$LOCAL_DIR"

# The private cluster's data directory. It must be owned by the user that runs
# Postgres; when we are root that is an unprivileged user who may not be able
# to reach into the repository, so fall back to /var/tmp (kept across reboots).
choose_pg_dir() {
  if [[ -n "${LEDGERLINE_PG_DIR:-}" ]]; then
    echo "$LEDGERLINE_PG_DIR"
  elif as_pg_user test -x "$LOCAL_DIR" 2>/dev/null; then
    echo "$LOCAL_DIR/pg"
  else
    echo "/var/tmp/ledgerline-pg-$PG_PORT"
  fi
}

if [[ "${1:-}" == "stop-db" ]]; then
  ensure_postgres
  ensure_pg_os_user
  stop_postgres "$(choose_pg_dir)"
  exit 0
elif [[ $# -gt 0 ]]; then
  die "usage: scripts/dev.sh [stop-db]"
fi

if [[ -z "${DATABASE_URL:-}" ]]; then
  ensure_postgres
  ensure_pg_os_user
  PG_DIR="$(choose_pg_dir)"
  # Durable settings: this cluster keeps your local data.
  start_postgres "$PG_DIR" "$PG_PORT"
  log "private Postgres keeps running after the server stops; 'scripts/dev.sh stop-db' stops it"
else
  log "using DATABASE_URL from the environment"
fi
export DATABASE_URL

# Build, and find the binary wherever cargo's target dir is configured to be.
log "building ledgerline (debug)"
BIN="$(
  cargo build --bin ledgerline --message-format=json-render-diagnostics \
    | python3 -c '
import json, sys
exe = ""
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "ledgerline":
        exe = m["executable"]
print(exe)
'
)"
[[ -n "$BIN" && -x "$BIN" ]] || die "cargo build did not produce the ledgerline binary"

log "applying migrations"
"$BIN" migrate

# Prints "ok" if the saved bootstrap still matches the database, "stale" if the
# database no longer has that organisation or its live keys (e.g. it was reset,
# or the key was revoked), and "unknown" if that cannot be checked. Key ids are
# read from the tokens (ll_<scope>_<key id>_<secret>); never the secrets.
bootstrap_state() {
  local fields org_id org_key_id op_key_id psql_bin
  fields="$(python3 - "$BOOTSTRAP_FILE" <<'EOF'
import json, re, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("invalid"); sys.exit(0)
def key_id(tok):
    m = re.fullmatch(r"ll_[a-z]+_([0-9a-f]{32})_[0-9a-f]{64}", tok or "")
    return m.group(1) if m else "-"
org = d.get("org_id") or ""
if not (re.fullmatch(r"[0-9a-fA-F-]{36}", org) and d.get("org_api_key") and d.get("operator_api_key")):
    print("invalid"); sys.exit(0)
print(org, key_id(d["org_api_key"]), key_id(d["operator_api_key"]))
EOF
)"
  if [[ "$fields" == invalid ]]; then
    echo stale
    return
  fi
  read -r org_id org_key_id op_key_id <<<"$fields"
  local bindir
  if bindir="${PG_BIN:-$(pg_bindir)}" && [[ -x "$bindir/psql" ]]; then
    psql_bin="$bindir/psql"
  elif command -v psql >/dev/null 2>&1; then
    psql_bin="psql"
  else
    echo unknown
    return
  fi
  local n
  if ! n="$("$psql_bin" -X -q -tA -v ON_ERROR_STOP=1 -v org="$org_id" -v ok="$org_key_id" -v op="$op_key_id" \
    "$DATABASE_URL" 2>/dev/null <<'EOF'
SELECT EXISTS (SELECT 1 FROM organizations WHERE id::text = lower(:'org'))
   AND (:'ok' = '-' OR EXISTS (SELECT 1 FROM api_keys
         WHERE replace(id::text, '-', '') = :'ok' AND revoked_at IS NULL))
   AND (:'op' = '-' OR EXISTS (SELECT 1 FROM api_keys
         WHERE replace(id::text, '-', '') = :'op' AND revoked_at IS NULL));
EOF
  )"; then
    echo unknown
    return
  fi
  if [[ "$n" == t ]]; then echo ok; else echo stale; fi
}

need_bootstrap=1
if [[ -s "$BOOTSTRAP_FILE" ]]; then
  case "$(bootstrap_state)" in
    ok) need_bootstrap=0 ;;
    unknown)
      warn "cannot check $BOOTSTRAP_FILE against the database (no psql?); reusing it"
      need_bootstrap=0
      ;;
    stale) log "$BOOTSTRAP_FILE does not match this database (was it reset?); bootstrapping again" ;;
  esac
fi

if ((need_bootstrap)); then
  log "bootstrapping a demo organisation"
  tmp="$(mktemp "$LOCAL_DIR/bootstrap.XXXXXX")"
  chmod 600 "$tmp"
  if ! "$BIN" bootstrap --json >"$tmp"; then
    rm -f "$tmp"
    die "ledgerline bootstrap failed"
  fi
  mv "$tmp" "$BOOTSTRAP_FILE"
fi

read -r ORG_ID ORG_KEY OP_KEY < <(python3 - "$BOOTSTRAP_FILE" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["org_id"], d["org_api_key"], d["operator_api_key"])
EOF
)
[[ -n "${OP_KEY:-}" ]] || die "$BOOTSTRAP_FILE is not what 'ledgerline bootstrap --json' prints"

# Where curl should go: a wildcard listen address is reached on loopback.
host="${ADDR%:*}"
port="${ADDR##*:}"
case "$host" in
  "" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;;
esac
BASE="http://$host:$port"

cat <<EOF

Ledgerline is starting on $BASE
  database:  $DATABASE_URL
  data dir:  $LOCAL_DIR/data
  keys:      $BOOTSTRAP_FILE (kept across runs)

Demo organisation: $ORG_ID
  org API key:      $ORG_KEY
  operator API key: $OP_KEY

Try it (in another shell):
  export ORG_KEY='$ORG_KEY'
  export OP_KEY='$OP_KEY'
  curl -s $BASE/health
  curl -s -H "Authorization: Bearer \$ORG_KEY" $BASE/api/me
  curl -s -H "Authorization: Bearer \$ORG_KEY" $BASE/api/api-keys
  curl -s -X POST -H "Authorization: Bearer \$OP_KEY" -H 'Content-Type: application/json' -d '{"name":"Acme"}' $BASE/admin/orgs

EOF

mkdir -p "$LOCAL_DIR/data"
export LEDGERLINE_DATA_DIR="$LOCAL_DIR/data"
exec "$BIN" serve --addr "$ADDR"
