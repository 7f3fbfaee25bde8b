#!/usr/bin/env bash
# Runs the revocation benchmark (server/benches/revoke) against a dev Keycloak on
# 127.0.0.1:$BENCH_KEYCLOAK_PORT (default 8193). A Keycloak that already serves the stint
# realm there is reused and left running. Otherwise one is started with dev/keycloak.sh
# and an in-memory database (KEYCLOAK_DB=dev-mem) and stopped when the run ends.
# BENCH_DATABASE=postgres puts the portal's database on PostgreSQL: the server at
# BENCH_POSTGRES_URL, or one that dev/postgres.sh starts with fsync on, on port
# $BENCH_POSTGRES_PORT (default 15433), and stops when the run ends.
# Figures go to stdout, progress and build output to stderr. See bench/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
BENCH_KEYCLOAK_PORT="${BENCH_KEYCLOAK_PORT:-8193}"
export BENCH_KEYCLOAK_PORT
readonly DISCOVERY_URL="http://127.0.0.1:$BENCH_KEYCLOAK_PORT/realms/stint/.well-known/openid-configuration"

log() {
  printf 'revoke.sh: %s\n' "$*" >&2
}

command -v curl >/dev/null || {
  log "error: curl not found: install curl (apt-get install curl)"
  exit 1
}
command -v cargo >/dev/null || {
  log "error: cargo not found: install Rust with rustup"
  exit 1
}

started_keycloak=0
started_postgres=0
BENCH_POSTGRES_PORT="${BENCH_POSTGRES_PORT:-15433}"
stop_services() {
  if ((started_keycloak)); then
    KEYCLOAK_PORT="$BENCH_KEYCLOAK_PORT" "$ROOT/dev/keycloak.sh" stop
  fi
  if ((started_postgres)); then
    POSTGRES_PORT="$BENCH_POSTGRES_PORT" "$ROOT/dev/postgres.sh" stop >/dev/null
  fi
}
trap stop_services EXIT

case "${BENCH_DATABASE:-sqlite}" in
  sqlite)
    unset BENCH_POSTGRES_URL
    ;;
  postgres)
    if [[ -z "${BENCH_POSTGRES_URL:-}" ]]; then
      started_postgres=1
      BENCH_POSTGRES_URL="$(POSTGRES_PORT="$BENCH_POSTGRES_PORT" POSTGRES_FSYNC=on "$ROOT/dev/postgres.sh" start)"
      log "started PostgreSQL with fsync on at $BENCH_POSTGRES_URL"
    fi
    export BENCH_POSTGRES_URL
    ;;
  *)
    log "error: invalid BENCH_DATABASE '${BENCH_DATABASE}': use sqlite or postgres"
    exit 2
    ;;
esac

if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$DISCOVERY_URL")" == 200 ]]; then
  log "reusing the Keycloak that serves the stint realm on port $BENCH_KEYCLOAK_PORT"
else
  started_keycloak=1
  KEYCLOAK_PORT="$BENCH_KEYCLOAK_PORT" KEYCLOAK_DB=dev-mem "$ROOT/dev/keycloak.sh" start
fi

# Keycloak's JVM, whose CPU time the benchmark reports: dev/keycloak.sh records the pid of
# kc.sh, which runs java as its child.
STINT_CACHE="${STINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stint}"
pid_file="${KEYCLOAK_STATE_DIR:-$STINT_CACHE/keycloak-run/$BENCH_KEYCLOAK_PORT}/keycloak.pid"
if [[ -z "${BENCH_KEYCLOAK_PID:-}" && -r "$pid_file" ]]; then
  script_pid="$(cat "$pid_file")"
  BENCH_KEYCLOAK_PID="$(pgrep -P "$script_pid" java | head -n 1 || true)"
  BENCH_KEYCLOAK_PID="${BENCH_KEYCLOAK_PID:-$script_pid}"
fi
if [[ -n "${BENCH_KEYCLOAK_PID:-}" ]]; then
  export BENCH_KEYCLOAK_PID
  log "Keycloak's CPU time is read from process $BENCH_KEYCLOAK_PID"
else
  log "no Keycloak pid file at $pid_file: Keycloak's CPU time is not reported (set BENCH_KEYCLOAK_PID)"
fi

cd "$ROOT"
cargo bench -p server --bench revoke
