#!/usr/bin/env bash
# Runs the portal with the demo Keycloak realm on SQLite, at http://127.0.0.1:3000.
#
# Installs what is missing (scripts/setup.sh demo), builds the portal, starts Keycloak on
# port 8180 with the realm in dev/realm/, and runs the portal in the foreground. Ctrl-C
# stops both. The portal's data stays in .stint/stint.db and Keycloak's in its cache
# folder, so a second run continues where the first stopped.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

scripts/setup.sh demo
scripts/build.sh

export KEYCLOAK_PORT=8180
export STINT_PUBLIC_URL=http://127.0.0.1:3000
dev/keycloak.sh start

portal_pid=
stop_all() {
    trap - INT TERM EXIT
    if [[ -n $portal_pid ]]; then
        kill -TERM "$portal_pid" 2>/dev/null || true
        wait "$portal_pid" 2>/dev/null || true
    fi
    dev/keycloak.sh stop || true
}
trap stop_all INT TERM EXIT

mkdir -p .stint
target_dir=${CARGO_TARGET_DIR:-$root/target}
STINT_SITE_ROOT=$target_dir/site "$target_dir/debug/stint" --config dev/stint.toml &
portal_pid=$!

for _ in $(seq 1 50); do
    curl -fsS http://127.0.0.1:3000/healthz >/dev/null 2>&1 && break
    kill -0 "$portal_pid" 2>/dev/null || die "the portal exited during start-up; see the log above"
    sleep 0.2
done

cat <<BANNER

  Stint is running at http://127.0.0.1:3000

  Demo sign-ins (username / password):
    alice / alice-pw    requester (group engineering)
    frank / frank-pw    requester (group support)
    bob   / bob-pw      approver
    carol / carol-pw    second approver
    dave  / dave-pw     auditor
    erin  / erin-pw     admin
  Keycloak admin console: http://127.0.0.1:8180/admin/  (admin / admin)

  Press Ctrl-C to stop the portal and Keycloak.

BANNER
wait "$portal_pid"
