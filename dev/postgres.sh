#!/usr/bin/env bash
# A private PostgreSQL server on 127.0.0.1 for tests, from Debian's postgresql package.
#
#   dev/postgres.sh start   initialise a fresh cluster and start it; prints its URL
#   dev/postgres.sh stop    stop it and delete its data
#   dev/postgres.sh url     print the URL
#
# POSTGRES_PORT (default 15432) picks the port. POSTGRES_FSYNC (default off) sets fsync:
# off is faster and fine for throwaway test data, and benchmarks set it to on. The cluster
# trusts every local connection, so it is for tests only. initdb refuses to run as root, so as root the cluster runs as
# the `postgres` user that the package creates.
set -euo pipefail

port=${POSTGRES_PORT:-15432}
fsync=${POSTGRES_FSYNC:-off}
case $fsync in
    on | off) ;;
    *)
        echo "invalid POSTGRES_FSYNC \`$fsync\`: use on or off" >&2
        exit 2
        ;;
esac
run_dir=${POSTGRES_RUN_DIR:-/tmp/stint-postgres-$port}
data_dir=$run_dir/data

bin_dir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x $dir/initdb ]]; then
            echo "$dir"
            return
        fi
    done
    echo "PostgreSQL server binaries not found: install them with apt-get install postgresql" >&2
    exit 1
}

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url() {
    local user=postgres
    [[ $(id -u) -eq 0 ]] || user=$(id -un)
    echo "postgres://$user@127.0.0.1:$port/postgres"
}

start() {
    local bin
    bin=$(bin_dir)
    stop >/dev/null 2>&1 || true
    rm -rf "$run_dir"
    mkdir -p "$run_dir"
    [[ $(id -u) -ne 0 ]] || chown postgres: "$run_dir"
    as_owner "$bin/initdb" --pgdata="$data_dir" --auth=trust --encoding=UTF8 \
        --locale=C.UTF-8 --username="$(url | sed -E 's#postgres://([^@]+)@.*#\1#')" >"$run_dir/initdb.log"
    as_owner "$bin/pg_ctl" --pgdata="$data_dir" --log="$run_dir/postgres.log" --wait \
        --options="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$run_dir -c fsync=$fsync" \
        start >/dev/null
    url
}

stop() {
    local bin
    bin=$(bin_dir)
    if [[ -f $data_dir/postmaster.pid ]]; then
        as_owner "$bin/pg_ctl" --pgdata="$data_dir" --mode=fast --wait stop >/dev/null
    fi
    rm -rf "$run_dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    *)
        echo "usage: $0 start|stop|url" >&2
        exit 2
        ;;
esac
