#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, the Rust tests on SQLite and PostgreSQL,
# then the browser tests in Chromium against a real Keycloak, with JavaScript on and off.
#
# Installs what is missing first (scripts/setup.sh test). Starts and stops its own Keycloak
# (port 18180, in-memory database), PostgreSQL (port 15432) and portal (port 13000), so it
# can run beside the demo. The PostgreSQL browser run starts two portal replicas (ports
# 13001 and 13002) behind a round-robin proxy on port 13000, with its control listener on
# 13009 (end2end/replicas.mjs).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

started=$(date +%s)
scripts/setup.sh test

export KEYCLOAK_PORT=${STINT_E2E_KEYCLOAK_PORT:-18180}
export KEYCLOAK_DB=dev-mem
export STINT_E2E_PORTAL_URL=${STINT_E2E_PORTAL_URL:-http://127.0.0.1:13000}
export STINT_E2E_KEYCLOAK_URL=http://127.0.0.1:$KEYCLOAK_PORT
export STINT_PUBLIC_URL=$STINT_E2E_PORTAL_URL

keycloak_log=$(mktemp)
cleanup() {
    dev/keycloak.sh stop >/dev/null 2>&1 || true
    dev/postgres.sh stop >/dev/null 2>&1 || true
    rm -f "$keycloak_log"
}
trap cleanup EXIT

# Keycloak takes a minute or two to start on two cores; it starts while the Rust tests run.
dev/keycloak.sh stop >/dev/null 2>&1 || true
dev/keycloak.sh start >"$keycloak_log" 2>&1 &
keycloak_job=$!

log "checking formatting and lints"
cargo fmt --all --check
cargo clippy -p server --all-targets -- -D warnings
cargo clippy -p app --features ssr --all-targets -- -D warnings
cargo clippy -p app --features hydrate -- -D warnings

log "starting PostgreSQL"
STINT_TEST_POSTGRES_URL=$(dev/postgres.sh start)
export STINT_TEST_POSTGRES_URL

log "running the Rust tests"
cargo test -p app --features ssr
cargo test -p server --lib --bins --test integration

log "building the portal"
scripts/build.sh

log "waiting for Keycloak"
if ! wait "$keycloak_job"; then
    cat "$keycloak_log" >&2
    die "Keycloak did not start"
fi
cat "$keycloak_log"
dev/keycloak-smoke.sh

# The tests against Keycloak run once with the portal's database on SQLite and once on
# PostgreSQL (STINT_TEST_ENGINE).
for engine in sqlite postgres; do
    log "running the Rust tests against Keycloak on $engine"
    STINT_TEST_ENGINE=$engine STINT_TEST_KEYCLOAK_URL=$STINT_E2E_KEYCLOAK_URL \
        cargo test -p server --test keycloak
done

log "running the browser tests on SQLite"
(cd end2end && npx playwright test)

# Every request of this run goes through a proxy without sticky sessions to one of two
# replicas on the same database, and tests/replicas.spec.ts runs only here.
log "running the browser tests on PostgreSQL with two replicas (JavaScript on)"
STINT_E2E_DATABASE_URL=$(dev/postgres.sh url)
(cd end2end && STINT_E2E_DATABASE_URL=$STINT_E2E_DATABASE_URL STINT_E2E_REPLICAS=2 npx playwright test --project js-on)

log "all tests passed in $(($(date +%s) - started)) s"
