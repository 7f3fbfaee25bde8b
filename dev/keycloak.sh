#!/usr/bin/env bash
# Fetches, starts and stops a local Keycloak in development mode with the
# Stint demo realm (dev/realm/*.json) imported. Run with no argument for help.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly REALM_SOURCE_DIR="$SCRIPT_DIR/realm"

KEYCLOAK_VERSION="${KEYCLOAK_VERSION:-26.7.3}"
STINT_CACHE="${STINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stint}"
KEYCLOAK_PORT="${KEYCLOAK_PORT:-8180}"
KEYCLOAK_DB="${KEYCLOAK_DB:-dev-file}"
KEYCLOAK_STATE_DIR="${KEYCLOAK_STATE_DIR:-$STINT_CACHE/keycloak-run/$KEYCLOAK_PORT}"
# Both paths are made absolute because running_pid matches the home directory
# against the absolute path that kc.sh puts on the java command line.
STINT_CACHE="$(realpath -m "$STINT_CACHE")"
KEYCLOAK_STATE_DIR="$(realpath -m "$KEYCLOAK_STATE_DIR")"
KEYCLOAK_START_TIMEOUT="${KEYCLOAK_START_TIMEOUT:-300}"
KEYCLOAK_STOP_TIMEOUT="${KEYCLOAK_STOP_TIMEOUT:-30}"

# Keycloak creates this temporary admin in the master realm when it creates
# the master realm, so a change takes effect only with a new database.
export KC_BOOTSTRAP_ADMIN_USERNAME="${KC_BOOTSTRAP_ADMIN_USERNAME:-admin}"
export KC_BOOTSTRAP_ADMIN_PASSWORD="${KC_BOOTSTRAP_ADMIN_PASSWORD:-admin}"

# The realm import replaces ${STINT_CLIENT_SECRET:...} and
# ${STINT_PUBLIC_URL:...} in the realm JSON with these environment variables.
# The realm file repeats both defaults so an import without this script gets
# the same values.
export STINT_CLIENT_SECRET="${STINT_CLIENT_SECRET:-stint-dev-secret}"
STINT_PUBLIC_URL="${STINT_PUBLIC_URL:-http://127.0.0.1:3000}"
export STINT_PUBLIC_URL="${STINT_PUBLIC_URL%/}"

readonly DIST_ROOT="$STINT_CACHE/keycloak"
readonly DIST_DIR="$DIST_ROOT/keycloak-$KEYCLOAK_VERSION"
readonly DIST_MARKER="$DIST_DIR/.stint-unpacked"

# Each state directory gets its own Keycloak home directory, a hard-linked
# copy of the cached distribution. Keycloak 26.7.3 derives the realm import
# directory (data/import), the dev-file database (data/h2) and the
# transaction log (data/transaction-logs) from kc.home.dir, and start-dev
# rewrites lib/quarkus whenever a build option such as --db changes. Two
# instances that share one distribution would therefore share their import
# files and race on lib/quarkus. The copy of lib/quarkus is a real copy
# because it is the only part of the distribution that start-dev writes.
readonly INSTANCE_HOME="$KEYCLOAK_STATE_DIR/home"
readonly HOME_SOURCE_FILE="$INSTANCE_HOME/.stint-source"
readonly IMPORT_DIR="$INSTANCE_HOME/data/import"
readonly H2_DIR="$INSTANCE_HOME/data/h2"
readonly IMPORT_FINGERPRINT_FILE="$INSTANCE_HOME/data/stint-import.sha256"
readonly PID_FILE="$KEYCLOAK_STATE_DIR/keycloak.pid"
readonly LOG_FILE="$KEYCLOAK_STATE_DIR/keycloak.log"

readonly BASE_URL="http://127.0.0.1:$KEYCLOAK_PORT"
readonly DISCOVERY_URL="$BASE_URL/realms/stint/.well-known/openid-configuration"

# Keycloak 26.7.3 is compiled for Java 17 (class file version 61) and starts
# on OpenJDK 17.0.15 as well as on Temurin 25.
readonly MIN_JAVA_MAJOR=17
readonly PREFERRED_JAVA_HOME=/usr/lib/jvm/temurin-25-jdk-amd64

usage() {
  cat <<EOF
Usage: dev/keycloak.sh COMMAND

Commands:
  fetch    Download Keycloak $KEYCLOAK_VERSION with Maven and unpack it into
           \$STINT_CACHE/keycloak (does nothing when already unpacked).
  start    Fetch if needed, start Keycloak in the background with the realms
           in dev/realm imported, then wait until the stint realm is served.
  wait     Wait until the stint realm's OpenID discovery document is served.
  stop     Stop the instance on \$KEYCLOAK_PORT (SIGTERM, then SIGKILL after
           \$KEYCLOAK_STOP_TIMEOUT s). Succeeds when nothing is running.
  status   Print whether the instance on \$KEYCLOAK_PORT is running.
           Exits 0 when running and 3 when not.
  reset    Delete the dev-file database of the stopped instance on
           \$KEYCLOAK_PORT, so that the next start imports dev/realm again.

Environment (current value):
  KEYCLOAK_VERSION        $KEYCLOAK_VERSION
  KEYCLOAK_PORT           $KEYCLOAK_PORT (HTTP port, bound to 127.0.0.1)
  KEYCLOAK_DB             $KEYCLOAK_DB (dev-file keeps data across restarts,
                          dev-mem starts from the realm files every time)
  KEYCLOAK_START_TIMEOUT  $KEYCLOAK_START_TIMEOUT (seconds)
  KEYCLOAK_STOP_TIMEOUT   $KEYCLOAK_STOP_TIMEOUT (seconds)
  STINT_CACHE             $STINT_CACHE
  KEYCLOAK_STATE_DIR      $KEYCLOAK_STATE_DIR
  KEYCLOAK_JAVA_HOME      JDK to run Keycloak with (default: newest JDK $MIN_JAVA_MAJOR+ found)
  STINT_PUBLIC_URL        $STINT_PUBLIC_URL (portal URL in the stint-portal client)
  STINT_CLIENT_SECRET     client secret of stint-portal (default stint-dev-secret)
  KC_BOOTSTRAP_ADMIN_USERNAME, KC_BOOTSTRAP_ADMIN_PASSWORD
                          master realm admin (default admin/admin)
EOF
}

log() {
  printf 'keycloak.sh: %s\n' "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

validate_settings() {
  if ! [[ "$KEYCLOAK_PORT" =~ ^[0-9]+$ ]] || ((KEYCLOAK_PORT < 1 || KEYCLOAK_PORT > 65535)); then
    die "invalid KEYCLOAK_PORT '$KEYCLOAK_PORT': expected a TCP port number from 1 to 65535"
  fi
  [[ "$KEYCLOAK_START_TIMEOUT" =~ ^[0-9]+$ ]] ||
    die "invalid KEYCLOAK_START_TIMEOUT '$KEYCLOAK_START_TIMEOUT': expected seconds"
  [[ "$KEYCLOAK_STOP_TIMEOUT" =~ ^[0-9]+$ ]] ||
    die "invalid KEYCLOAK_STOP_TIMEOUT '$KEYCLOAK_STOP_TIMEOUT': expected seconds"
  case "$KEYCLOAK_DB" in
    dev-file | dev-mem) ;;
    *) die "invalid KEYCLOAK_DB '$KEYCLOAK_DB': expected dev-file or dev-mem" ;;
  esac
  [[ "$STINT_PUBLIC_URL" =~ ^https?://[^/]+(/.*)?$ ]] ||
    die "invalid STINT_PUBLIC_URL '$STINT_PUBLIC_URL': expected an http:// or https:// URL"
}

# Prints the feature release of the JDK in $1 (17 for 17.0.15), or nothing.
java_major_version() {
  local java_home="$1" version
  [[ -x "$java_home/bin/java" ]] || return 0
  version="$("$java_home/bin/java" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = //p')"
  # Java 8 and older report 1.8 and so on.
  [[ "$version" =~ ^1\. ]] && version="${version#1.}"
  [[ "$version" =~ ^[0-9]+$ ]] && printf '%s\n' "$version"
  return 0
}

# Sets keycloak_java_home to the JDK that runs Keycloak: KEYCLOAK_JAVA_HOME if set,
# else the Temurin 25 JDK if installed, else the newest JDK 17+ among
# JAVA_HOME, /usr/lib/jvm/* and the java on PATH.
select_java() {
  local candidate major best="" best_major=0 java_on_path

  if [[ -n "${KEYCLOAK_JAVA_HOME:-}" ]]; then
    major="$(java_major_version "$KEYCLOAK_JAVA_HOME")"
    [[ -n "$major" ]] || die "KEYCLOAK_JAVA_HOME '$KEYCLOAK_JAVA_HOME' contains no runnable bin/java"
    ((major >= MIN_JAVA_MAJOR)) ||
      die "KEYCLOAK_JAVA_HOME '$KEYCLOAK_JAVA_HOME' is Java $major, but Keycloak needs Java $MIN_JAVA_MAJOR or newer"
    keycloak_java_home="$KEYCLOAK_JAVA_HOME"
    return
  fi

  major="$(java_major_version "$PREFERRED_JAVA_HOME")"
  if [[ -n "$major" ]] && ((major >= MIN_JAVA_MAJOR)); then
    keycloak_java_home="$PREFERRED_JAVA_HOME"
    return
  fi

  local candidates=("${JAVA_HOME:-}")
  for candidate in /usr/lib/jvm/*/; do
    candidates+=("${candidate%/}")
  done
  if java_on_path="$(command -v java)"; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$java_on_path")")")")
  fi

  for candidate in "${candidates[@]}"; do
    [[ -n "$candidate" ]] || continue
    major="$(java_major_version "$candidate")"
    if [[ -n "$major" ]] && ((major > best_major)); then
      best="$candidate"
      best_major="$major"
    fi
  done

  ((best_major >= MIN_JAVA_MAJOR)) ||
    die "no JDK $MIN_JAVA_MAJOR or newer found (looked at JAVA_HOME, /usr/lib/jvm/* and java on PATH). Install one (apt-get install openjdk-17-jdk-headless) or set KEYCLOAK_JAVA_HOME"
  keycloak_java_home="$best"
}

cmd_fetch() {
  if [[ -f "$DIST_MARKER" ]]; then
    log "Keycloak $KEYCLOAK_VERSION is already unpacked in $DIST_DIR"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: install maven (apt-get install maven)"
  command -v flock >/dev/null || die "flock not found: install util-linux (apt-get install util-linux)"

  mkdir -p "$DIST_ROOT"
  # Parallel starts (for example two test runs) must not unpack into one
  # directory at the same time.
  exec {lock_fd}>"$DIST_ROOT/.fetch.lock"
  flock "$lock_fd"
  if [[ -f "$DIST_MARKER" ]]; then
    flock -u "$lock_fd"
    log "Keycloak $KEYCLOAK_VERSION was unpacked into $DIST_DIR by a parallel fetch"
    return 0
  fi

  local artifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz"
  local work_dir
  work_dir="$(mktemp -d "$DIST_ROOT/.fetch.XXXXXX")"
  # Removes the partial download and unpack on every exit path.
  trap 'rm -rf "$work_dir"' EXIT

  log "downloading $artifact with Maven"
  # Maven copies from its local repository (~/.m2) when the artifact is there
  # and downloads it into that repository otherwise.
  local mvn_command=(mvn -B -q -Dstyle.color=never dependency:copy "-Dartifact=$artifact" "-DoutputDirectory=$work_dir/download")
  if ! "${mvn_command[@]}" >"$work_dir/mvn.log" 2>&1; then
    log "error: download of $artifact failed. Command: ${mvn_command[*]}"
    log "Maven output:"
    cat "$work_dir/mvn.log" >&2
    exit 1
  fi

  local tarball="$work_dir/download/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz"
  [[ -f "$tarball" ]] || die "Maven succeeded but $tarball is missing"

  mkdir "$work_dir/unpack"
  tar -xzf "$tarball" -C "$work_dir/unpack" ||
    die "failed to unpack $tarball into $work_dir/unpack"
  [[ -x "$work_dir/unpack/keycloak-$KEYCLOAK_VERSION/bin/kc.sh" ]] ||
    die "$tarball does not contain keycloak-$KEYCLOAK_VERSION/bin/kc.sh"

  # A directory without the marker is left from an interrupted fetch.
  rm -rf "$DIST_DIR"
  mv "$work_dir/unpack/keycloak-$KEYCLOAK_VERSION" "$DIST_DIR"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$DIST_MARKER"
  rm -rf "$work_dir"
  trap - EXIT
  flock -u "$lock_fd"
  log "unpacked Keycloak $KEYCLOAK_VERSION into $DIST_DIR"
}

# Creates or refreshes the per-instance home directory (see INSTANCE_HOME).
# data/ is kept when the home is rebuilt for another Keycloak version, and
# Keycloak migrates a dev-file database to the newer version when it starts.
prepare_home() {
  if [[ -f "$HOME_SOURCE_FILE" && "$(cat "$HOME_SOURCE_FILE")" == "$DIST_DIR" ]]; then
    return 0
  fi

  mkdir -p "$INSTANCE_HOME"
  local entry name
  for entry in "$INSTANCE_HOME"/* "$INSTANCE_HOME"/.stint-source; do
    [[ -e "$entry" ]] || continue
    [[ "$(basename "$entry")" == data ]] && continue
    rm -rf "$entry"
  done

  for entry in "$DIST_DIR"/*; do
    name="$(basename "$entry")"
    [[ "$name" == data ]] && continue
    # Hard links need the cache and the state directory on one file system,
    # so a plain copy (about 190 MB for 26.7.3) is the fallback.
    cp -al "$entry" "$INSTANCE_HOME/$name" 2>/dev/null || {
      rm -rf "${INSTANCE_HOME:?}/$name"
      cp -a "$entry" "$INSTANCE_HOME/$name"
    }
  done
  rm -rf "$INSTANCE_HOME/lib/quarkus"
  cp -a "$DIST_DIR/lib/quarkus" "$INSTANCE_HOME/lib/quarkus"

  printf '%s\n' "$DIST_DIR" >"$HOME_SOURCE_FILE"
}

# Prints a hash of everything that the realm import reads, so that a start
# with an existing dev-file database can tell when the import is out of date.
import_fingerprint() {
  {
    cat "$REALM_SOURCE_DIR"/*.json
    printf '%s\n%s\n' "$STINT_PUBLIC_URL" "$STINT_CLIENT_SECRET"
  } | sha256sum | cut -d' ' -f1
}

# Copies dev/realm/*.json into the import directory of this instance and
# warns when an existing dev-file database was imported from other input,
# because Keycloak skips the import of a realm that already exists.
prepare_import() {
  local realm_files=("$REALM_SOURCE_DIR"/*.json)
  [[ -f "${realm_files[0]}" ]] || die "no realm file found in $REALM_SOURCE_DIR"

  rm -rf "$IMPORT_DIR"
  mkdir -p "$IMPORT_DIR"
  cp "${realm_files[@]}" "$IMPORT_DIR/"

  [[ "$KEYCLOAK_DB" == dev-file ]] || return 0
  local fingerprint
  fingerprint="$(import_fingerprint)"
  if [[ ! -d "$H2_DIR" ]]; then
    printf '%s\n' "$fingerprint" >"$IMPORT_FINGERPRINT_FILE"
  elif [[ "$(cat "$IMPORT_FINGERPRINT_FILE" 2>/dev/null)" != "$fingerprint" ]]; then
    log "warning: the dev-file database in $H2_DIR was imported from other realm files or other STINT_PUBLIC_URL/STINT_CLIENT_SECRET values, and Keycloak does not re-import an existing realm. Run 'dev/keycloak.sh stop' and 'dev/keycloak.sh reset' to import dev/realm again."
  fi
}

# Prints the pid of the instance recorded in the state directory if that
# process is still a Keycloak started from this state directory.
running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guards against a reused pid: the command line names this home directory.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$INSTANCE_HOME/" || return 1
  printf '%s\n' "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$KEYCLOAK_PORT") 2>/dev/null
}

discovery_ready() {
  command -v curl >/dev/null || die "curl not found: install curl (apt-get install curl)"
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$DISCOVERY_URL")" == 200 ]]
}

print_log_tail() {
  if [[ -f "$LOG_FILE" ]]; then
    log "last 40 lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2
  else
    log "no log file at $LOG_FILE"
  fi
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    die "Keycloak is already running on $BASE_URL (pid $pid). Stop it with 'dev/keycloak.sh stop'"
  fi
  if port_in_use; then
    die "port $KEYCLOAK_PORT on 127.0.0.1 is already in use by another process. Stop that process or set another KEYCLOAK_PORT"
  fi
  select_java
  cmd_fetch
  mkdir -p "$KEYCLOAK_STATE_DIR"
  prepare_home
  prepare_import

  [[ -f "$LOG_FILE" ]] && mv "$LOG_FILE" "$LOG_FILE.1"
  log "starting Keycloak $KEYCLOAK_VERSION on $BASE_URL (db $KEYCLOAK_DB, Java $(java_major_version "$keycloak_java_home") in $keycloak_java_home, portal URL $STINT_PUBLIC_URL, log $LOG_FILE)"
  # setsid makes kc.sh the leader of a new process group, so stop can signal
  # kc.sh and the java process it starts together. JAVA_HOME is set for
  # Keycloak only, so Maven in cmd_fetch keeps the JDK it would pick itself.
  JAVA_HOME="$keycloak_java_home" setsid "$INSTANCE_HOME/bin/kc.sh" start-dev \
    --http-host=127.0.0.1 \
    "--http-port=$KEYCLOAK_PORT" \
    "--hostname=$BASE_URL" \
    --import-realm \
    "--db=$KEYCLOAK_DB" \
    >"$LOG_FILE" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$PID_FILE"

  if ! wait_until_ready; then
    # A failed start leaves nothing running, so the next start can retry.
    cmd_stop
    exit 1
  fi
}

cmd_wait() {
  wait_until_ready || exit 1
}

# Polls the discovery document until it is served, the started process exits
# or KEYCLOAK_START_TIMEOUT passes. Returns 1 after printing the log tail in
# the last two cases.
wait_until_ready() {
  local deadline=$((SECONDS + KEYCLOAK_START_TIMEOUT))
  local started_at pid=""
  # With a pid file, the wait also ends when that process exits, and the
  # elapsed time counts from the start command, which wrote the file.
  # Without one, the wait polls an instance started some other way.
  if [[ -f "$PID_FILE" ]]; then
    pid="$(cat "$PID_FILE")"
    started_at="$(stat -c %Y "$PID_FILE")"
  else
    started_at="$(date +%s)"
  fi

  while true; do
    if discovery_ready; then
      log "keycloak ready on $BASE_URL after $(($(date +%s) - started_at)) s"
      return 0
    fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "error: Keycloak (pid $pid) exited before $DISCOVERY_URL was served"
      rm -f "$PID_FILE"
      print_log_tail
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "error: timed out after $KEYCLOAK_START_TIMEOUT s waiting for $DISCOVERY_URL"
      print_log_tail
      return 1
    fi
    sleep 1
  done
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "Keycloak is not running on $BASE_URL"
    return 0
  fi

  kill -TERM -- "-$pid" 2>/dev/null || true
  local deadline=$((SECONDS + KEYCLOAK_STOP_TIMEOUT))
  while kill -0 -- "-$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "Keycloak (pid $pid) is still running after $KEYCLOAK_STOP_TIMEOUT s, sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$PID_FILE"
  log "stopped Keycloak on $BASE_URL (pid $pid)"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if discovery_ready; then
      echo "running on $BASE_URL (pid $pid, ready, state dir $KEYCLOAK_STATE_DIR)"
    else
      echo "running on $BASE_URL (pid $pid, starting, state dir $KEYCLOAK_STATE_DIR)"
    fi
    return 0
  fi
  echo "not running on $BASE_URL (state dir $KEYCLOAK_STATE_DIR)"
  return 3
}

cmd_reset() {
  local pid
  if pid="$(running_pid)"; then
    die "Keycloak is running on $BASE_URL (pid $pid). Stop it with 'dev/keycloak.sh stop' first"
  fi
  rm -rf "$H2_DIR" "$IMPORT_FINGERPRINT_FILE"
  log "deleted the dev-file database $H2_DIR, so the next start imports dev/realm again"
}

main() {
  local command="${1:-}"
  case "$command" in
    fetch | start | wait | stop | status | reset)
      validate_settings
      "cmd_$command"
      ;;
    help | -h | --help)
      usage
      ;;
    "")
      usage >&2
      exit 2
      ;;
    *)
      log "error: unknown command '$command'"
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
