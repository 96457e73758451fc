#!/usr/bin/env bash
# Benchmarks: Lambda cold start of every measured function against a
# hello-world lambda_http baseline, and the local server's throughput on
# /api/me against /health. Prints one JSON object on stdout (progress goes to
# stderr) and also writes it to target/bench.json.
#
#   scripts/bench.sh                    defaults (20 cold starts, 10 s per endpoint)
#   scripts/bench.sh --events all       every api_* function, events as-is
#   scripts/bench.sh --runs 5 --duration 3
#   scripts/bench.sh --help             every option of ledgerline-bench
#
# Environment:
#   DATABASE_URL              use this Postgres server (a private database is
#                             created on it and dropped); unset: a private
#                             cluster is started for the run and stopped after
#   LEDGERLINE_BENCH_PG_FAST  1: run that private cluster without fsync (not
#                             representative of a durable database)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

PG_DIR=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$PG_DIR" ]]; then
    stop_postgres "$PG_DIR" || true
    rm -rf "$PG_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Help and version need no database and are not a report.
for a in "$@"; do
  case "$a" in
    -h | --help | -V | --version)
      exec cargo run -q --release -p ledgerline-bench -- "$@"
      ;;
  esac
done

# Everything but the JSON goes to stderr.
if [[ -z "${DATABASE_URL:-}" ]]; then
  ensure_postgres
  ensure_pg_os_user
  PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ledgerline-pg-bench.XXXXXX")"
  fast=()
  if [[ "${LEDGERLINE_BENCH_PG_FAST:-0}" == 1 ]]; then fast=(--fast); fi
  start_postgres "${fast[@]}" "$PG_DIR" "$(free_port)" >&2
else
  log "using DATABASE_URL from the environment"
fi
export DATABASE_URL

log "building release binaries (functions and bench)"
cargo build --release -p ledgerline-functions -p ledgerline-bench >&2

TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/release/ledgerline-bench"
[[ -x "$BIN" ]] || die "cargo build did not produce $BIN"

OUT="$TARGET_DIR/bench.json"
tmp="$(mktemp "$TARGET_DIR/bench.json.XXXXXX")"
if ! "$BIN" --repo "$REPO" --bin-dir "$TARGET_DIR/release" "$@" >"$tmp"; then
  rm -f "$tmp"
  die "ledgerline-bench failed"
fi
mv "$tmp" "$OUT"
log "wrote $OUT"
cat "$OUT"
