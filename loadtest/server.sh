# Sourced by the measurement scripts (targets.sh, soak.sh, anatomy.sh, redis-compare.sh), from
# the repository root: builds the release server and load test they run, and is the one way to
# start and stop the throw-away release server they measure. Expects $PORT; keeps the server's
# PID in $server.

cargo build --release -q -p stockd -p stockd-loadtest

# start_server DATA_DIR LOG [SERVE ARGS...]: starts `stockd serve` on 127.0.0.1:$PORT (no
# authentication, warnings only, durable as configured) and waits until it answers a ping.
start_server() {
    local data=$1 log=$2
    shift 2
    ./target/release/stockd serve --listen "127.0.0.1:$PORT" --data-dir "$data" --no-auth \
        --log-level warn "$@" >"$log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        ./target/release/stockd ping --server "127.0.0.1:$PORT" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the server on 127.0.0.1:$PORT did not answer within 10 s (log: $log)" >&2
    return 1
}

# stop_server: stops the server started last (SIGTERM, then waits for it), if any.
stop_server() {
    if [ -n "${server:-}" ]; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" || true
        server=""
    fi
}

# scratch: a temporary directory in $work, and on exit the load test whose PID a script keeps
# in $load (if any) and the server are stopped and the directory removed.
scratch() {
    work=$(mktemp -d)
    load=""
    trap 'if [ -n "$load" ]; then kill "$load" 2>/dev/null || true; fi
        stop_server; rm -rf "$work"' EXIT
}
