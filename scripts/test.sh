#!/usr/bin/env bash
# Runs every test of the repository on a fresh machine (no AWS, no Docker):
# installs the tools it needs, starts a private Postgres and moto_server on
# free ports, then format check, clippy, build, cargo test, cfn-lint and
# sam validate. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh -p ledgerline-shared ledger::
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

if [[ -n "${CI:-}" ]]; then
  export CARGO_TERM_COLOR=never
fi

T_START=$SECONDS
CURRENT_STEP="setup"
PG_DIR=""

banner() {
  printf '\n======== %s ========\n' "$*"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_moto || true
  if [[ -n "$PG_DIR" ]]; then
    stop_postgres "$PG_DIR" || true
    rm -rf "$PG_DIR"
  fi
  if ((rc == 0)); then
    printf '\nall steps passed in %ds\n' "$((SECONDS - T_START))"
  else
    printf '\nFAILED at step "%s" (exit %d) after %ds\n' "$CURRENT_STEP" "$rc" "$((SECONDS - T_START))" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step NAME CMD...: runs one step with a banner and its duration.
step() {
  CURRENT_STEP="$1"
  shift
  banner "$CURRENT_STEP"
  printf '$ %s\n' "$*"
  local t0=$SECONDS
  "$@"
  printf -- '-- %s: ok (%ds)\n' "$CURRENT_STEP" "$((SECONDS - t0))"
}

start_services() {
  local pg_port moto_port
  pg_port="$(free_port)"
  moto_port="$(free_port)"
  # Fresh cluster per run, in a directory the Postgres user owns (the repo
  # may not be readable by it).
  PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ledgerline-pg-test.XXXXXX")"
  # TLS on, so tests can connect either way (tests/adapters.rs,
  # postgres_connections_use_tls_as_the_connection_string_asks).
  start_postgres --fast --tls "$PG_DIR" "$pg_port"
  start_moto "$moto_port"

  # Tests create their own databases from this admin URL.
  export LEDGERLINE_TEST_DATABASE_URL="$DATABASE_URL"
  # Nothing may silently share the admin database.
  unset DATABASE_URL
  export LEDGERLINE_TEST_AWS_ENDPOINT="http://127.0.0.1:$moto_port"
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
  export LEDGERLINE_TEST_PG_CA="$LEDGERLINE_PG_CA"
  echo "LEDGERLINE_TEST_DATABASE_URL=$LEDGERLINE_TEST_DATABASE_URL"
  echo "LEDGERLINE_TEST_PG_CA=$LEDGERLINE_TEST_PG_CA"
  echo "LEDGERLINE_TEST_AWS_ENDPOINT=$LEDGERLINE_TEST_AWS_ENDPOINT"
}

# sam prints its linter's log lines too; show them only when it fails.
sam_validate() {
  local out
  if out="$(sam validate --template-file template.yaml --region us-east-1 --lint 2>&1)"; then
    printf '%s\n' "$out" | tail -n 1
  else
    printf '%s\n' "$out"
    return 1
  fi
}

step "tools" ensure_tools
step "services (postgres, moto)" start_services
step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build" cargo build --workspace --all-targets
step "cargo test" cargo test --workspace "$@"
step "cfn-lint" cfn-lint template.yaml
step "sam validate" sam_validate
CURRENT_STEP="done"
