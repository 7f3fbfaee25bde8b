#!/usr/bin/env bash
# Measures the peak memory (RSS) and wall time of `stint export` (CSV and JSON lines) and
# `stint audit verify` on SQLite audit logs of growing size, to show that both stream the
# log: the peak RSS should stay flat while the number of events grows tenfold.
#
#   bench/export-memory.sh [EVENTS...]        default: 100000 1000000
#
# The log is generated in a temporary SQLite file with a valid hash chain: five events per
# access request (created, approved, grant scheduled, applied, revoked), one request and one
# grant row per five events. Every seventh justification starts with `=`, so the CSV writer
# also neutralises formulas. Each size extends the log of the size before it.
#
# Needs python3 (the generator, with its sqlite3 and hashlib modules) and GNU time at
# /usr/bin/time (Debian package `time`). Needs no Keycloak: the export and verify commands
# read only the database, so the configuration names a dummy Keycloak. The binary is
# $STINT_BIN, else ${CARGO_TARGET_DIR:-target}/release/stint, else the debug build.
# Figures go to stdout, progress to stderr. Temporary files are removed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

log() {
  printf 'export-memory.sh: %s\n' "$*" >&2
}

fail() {
  log "error: $*"
  exit 1
}

[[ -x /usr/bin/time ]] || fail "/usr/bin/time not found: install GNU time (apt-get install time)"
command -v python3 >/dev/null || fail "python3 not found: install it (apt-get install python3)"

sizes=("$@")
if ((${#sizes[@]} == 0)); then
  sizes=(100000 1000000)
fi
previous=0
for size in "${sizes[@]}"; do
  [[ "$size" =~ ^[1-9][0-9]*$ ]] || fail "invalid size '$size': give event counts as positive integers"
  ((size > previous)) || fail "sizes must grow: $size follows $previous"
  previous=$size
done
largest=$previous

target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
binary="${STINT_BIN:-}"
if [[ -z "$binary" ]]; then
  if [[ -x "$target_dir/release/stint" ]]; then
    binary="$target_dir/release/stint"
  elif [[ -x "$target_dir/debug/stint" ]]; then
    binary="$target_dir/debug/stint"
    log "warning: using the debug build $binary; build with 'cargo build -p server --release' for figures that match production"
  else
    fail "no stint binary in $target_dir/release or $target_dir/debug: run 'cargo build -p server --release' or set STINT_BIN"
  fi
fi
"$binary" export --help >/dev/null 2>&1 ||
  fail "$binary has no export command: rebuild it with 'cargo build -p server --release'"

work="$(mktemp -d "${TMPDIR:-/tmp}/stint-export-bench.XXXXXX")"
readonly work
cleanup() {
  rm -rf "$work"
}
trap cleanup EXIT

# Estimate of the disk the largest run needs at once: the database and the largest export
# (JSON). At 1,000,000 events they took 531 MiB and 585 MiB, about 1,170 bytes per event.
needed_kib=$((largest * 1300 / 1024))
free_kib="$(df --output=avail -k "$work" | tail -n 1 | tr -d ' ')"
((free_kib > needed_kib)) ||
  fail "$work has $((free_kib / 1024)) MiB free; $largest events need about $((needed_kib / 1024)) MiB"

database="$work/audit.db"
config="$work/stint.toml"
cat >"$config" <<EOF
public_url = "http://127.0.0.1:9"
database_url = "sqlite://$database"
catalog = "$ROOT/dev/catalog.toml"

# Export and verify read only the database and never contact Keycloak, so these values
# are placeholders.
[keycloak]
url = "http://127.0.0.1:9"
realm = "bench"
client_id = "bench"
client_secret = "bench"
EOF

export RUST_LOG=warn

# Creates the schema: the command migrates an empty database before it reads the log.
"$binary" --config "$config" audit verify >/dev/null

# Appends events to the log until it contains $1 events in all, continuing the hash chain
# from its current head. The hash is app/src/server/audit/chain.rs `AuditRecord::hash`:
# SHA-256 over the link and the fields, each written as `~|` for null, else
# `<length in bytes>:<text>|`.
generate() {
  python3 - "$database" "$1" "$start_time" "$step" <<'PYTHON'
import hashlib
import sqlite3
import sys

path, target, start, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
connection = sqlite3.connect(path)
connection.execute("pragma journal_mode = wal")
connection.execute("pragma synchronous = off")

(count,) = connection.execute("select count(*) from audit_event").fetchone()
head = connection.execute("select hash from audit_event order by id desc limit 1").fetchone()
prev_hash = head[0] if head and head[0] else "0" * 64
(requests,) = connection.execute("select count(*) from access_request").fetchone()
# Event number n occurs at start + n * step. The exports' own events do not count.
(generated,) = connection.execute(
    "select count(*) from audit_event where action != 'audit_exported'"
).fetchone()

ROLES = ["db-admin", "prod-deployer", "support-viewer", "refunds", "invoice-admin", "ops-lead"]


def field(value):
    if value is None:
        return b"~|"
    data = value.encode()
    return str(len(data)).encode() + b":" + data + b"|"


def chained(occurred_at, actor_subject, actor_username, request_id, grant_id, action, from_status, to_status, comment):
    global prev_hash
    encoded = b"".join(
        field(value)
        for value in (prev_hash, str(occurred_at), actor_subject, actor_username, request_id, grant_id, action, from_status, to_status, comment)
    )
    digest = hashlib.sha256(encoded).hexdigest()
    row = (occurred_at, actor_subject, actor_username, request_id, grant_id, action, from_status, to_status, comment, prev_hash, digest)
    prev_hash = digest
    return row


events, request_rows, grant_rows = [], [], []


def flush():
    connection.executemany(
        "insert into access_request (id, requester_subject, requester_username, role_key, duration_seconds, "
        "starts_at, justification, ticket, status, approvals_required, approval_deadline, created_at, updated_at) "
        "values (?, ?, ?, ?, 3600, null, ?, ?, 'approved', 1, ?, ?, ?)",
        request_rows,
    )
    connection.executemany(
        "insert into access_grant (id, request_id, subject, username, role_key, role_name, starts_at, ends_at, "
        "status, applied_at, revoked_at, due_at, outcome, created_at, updated_at) "
        "values (?, ?, ?, ?, ?, ?, ?, ?, 'ended', ?, ?, ?, 'ended; the mapping was removed', ?, ?)",
        grant_rows,
    )
    connection.executemany(
        "insert into audit_event (occurred_at, actor_subject, actor_username, request_id, grant_id, action, "
        "from_status, to_status, comment, prev_hash, hash) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        events,
    )
    events.clear()
    request_rows.clear()
    grant_rows.clear()


request = None
for index in range(target - count):
    sequence = generated + index
    at = start + sequence * step
    step = index % 5
    if step == 0:
        number = requests
        requests += 1
        user = number % 500
        subject = f"{user:08x}-0000-4000-8000-{user:012x}"
        username = f"user{user:03d}"
        role = ROLES[number % len(ROLES)]
        request_id = f"{number:08x}-0001-4000-8000-{number:012x}"
        grant_id = f"{number:08x}-0002-4000-8000-{number:012x}"
        if number % 7 == 0:
            justification = f'=HYPERLINK("http://127.0.0.1/{number}","incident {number}")'
        else:
            justification = f"restore the orders table after incident {number}, see the runbook"
        ticket = f"OPS-{number}"
        request = (subject, username, role, request_id, grant_id, justification)
        request_rows.append((request_id, subject, username, role, justification, ticket, at + 86_400, at, at))
        grant_rows.append((grant_id, request_id, subject, username, role, role, at + 2 * step, at + 3600,
                           at + 3 * step, at + 4 * step, at + 3600, at, at))
    subject, username, role, request_id, grant_id, justification = request
    if step == 0:
        events.append(chained(at, subject, username, request_id, None, "request_created", None, "pending", justification))
    elif step == 1:
        events.append(chained(at, "approver-subject", "approver", request_id, None, "request_approved", "pending", "approved", "looks right"))
    elif step == 2:
        events.append(chained(at, None, None, request_id, grant_id, "grant_scheduled", "scheduled", "scheduled", f"from {at} to {at + 3600}"))
    elif step == 3:
        events.append(chained(at, None, None, request_id, grant_id, "grant_applied", "scheduled", "active", "Keycloak answered 204 No Content"))
    else:
        events.append(chained(at, subject, username, request_id, grant_id, "grant_revoked", "active", "ended", "the mapping was removed"))
    if len(events) >= 20_000:
        flush()
flush()
connection.commit()
connection.execute("pragma wal_checkpoint(truncate)")
connection.close()
PYTHON
}

# Runs "$@" under GNU time and prints one table row: label, events, rows, output size,
# peak RSS, wall, user and system time.
measure() {
  local label=$1 events=$2 output=$3
  shift 3
  if ! /usr/bin/time -v -o "$work/time.txt" "$@" >"$work/stdout.txt" 2>"$work/stderr.txt"; then
    log "error: '$*' failed:"
    cat "$work/stderr.txt" "$work/stdout.txt" >&2
    exit 1
  fi
  local rss wall user system rows size_mib
  rss="$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.txt")"
  # GNU time writes the wall time as h:mm:ss or m:ss.ss.
  wall="$(awk -F': ' '/Elapsed \(wall clock\)/ {
    n = split($2, part, ":"); seconds = 0
    for (i = 1; i <= n; i++) seconds = seconds * 60 + part[i]
    printf "%.2f", seconds }' "$work/time.txt")"
  user="$(awk -F': ' '/User time/ { print $2 }' "$work/time.txt")"
  system="$(awk -F': ' '/System time/ { print $2 }' "$work/time.txt")"
  rows="$(grep -hoE 'exported [0-9]+ events|[0-9]+ events checked' "$work/stderr.txt" "$work/stdout.txt" |
    grep -oE '[0-9]+' | head -n 1 || true)"
  if [[ -n "$output" && -f "$output" ]]; then
    size_mib="$(awk -v bytes="$(stat -c %s "$output")" 'BEGIN { printf "%.1f", bytes / 1048576 }')"
  else
    size_mib="-"
  fi
  printf '| %s | %s | %s | %s | %.1f | %s | %s | %s |\n' \
    "$events" "$label" "${rows:--}" "$size_mib" "$(awk -v kib="$rss" 'BEGIN { print kib / 1024 }')" \
    "$wall" "$user" "$system"
}

# The generated events are spread evenly over the last 400 days, whatever the largest
# size, so `export --from` the first day `--to` today covers all of them.
start_time=$(($(date +%s) - 400 * 86400))
step=$((400 * 86400 / largest))
((step > 0)) || step=1
first_day="$(date -u -d "@$start_time" +%F)"
today="$(date -u +%F)"

printf '# stint export and audit verify, %s\n' "$(date -u +%FT%TZ)"
printf '# binary %s; %s CPUs (%s), load average %s; %s MiB RAM, %s MiB available\n' \
  "$binary" "$(nproc)" "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
  "$(cut -d ' ' -f 1-3 /proc/loadavg)" \
  "$(awk '/MemTotal/ { printf "%.0f", $2 / 1024 }' /proc/meminfo)" \
  "$(awk '/MemAvailable/ { printf "%.0f", $2 / 1024 }' /proc/meminfo)"
printf '| events in the log | command | rows | output MiB | peak RSS MiB | wall s | user s | system s |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- |\n'

for size in "${sizes[@]}"; do
  log "generating the log up to $size events"
  started=$SECONDS
  generate "$size"
  log "generated in $((SECONDS - started)) s; database $(($(stat -c %s "$database") / 1048576)) MiB"

  for format in csv json; do
    output="$work/export.$format"
    log "exporting $size events as $format"
    measure "export --format $format" "$size" "$output" \
      "$binary" --config "$config" export --from "$first_day" --to "$today" --format "$format" --output "$output"
    rm -f "$output"
  done

  log "verifying the chain of $size events"
  measure "audit verify" "$size" "" "$binary" --config "$config" audit verify
done
