#!/usr/bin/env bash
# Where the time of a closed-loop run goes: starts a fresh release server (fsync "always"),
# runs a load test against it, and reads the server's own counters (/metrics) and both
# processes' CPU time (/proc) over the measured seconds. Prints the group commit (records per
# fdatasync, time per fdatasync and per commit round), the time a request waits for its commit
# inside the server, the rest of a client's cycle (connections / throughput minus the time in
# the server: network, both processes' scheduling and the client itself), and CPU per
# operation. Bounded; every process it starts is stopped by PID. FSYNC=never (or interval) runs
# the server with that `[storage] fsync` instead, to see what the same load costs without
# waiting for the disk.
#
#   loadtest/anatomy.sh                       # hot SKU, 50 connections x 1, 6 s
#   FSYNC=never loadtest/anatomy.sh           # the same, acknowledged before any fdatasync
#   loadtest/anatomy.sh mixed --skus 10000 --mix 100,0,0,0 --connections 20
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-17985}
HTTP_PORT=$((PORT + 1))
DURATION=${DURATION:-6}
if [ "$#" -eq 0 ]; then
    set -- flash-sale --stock 1000000000 --confirm-share 0 --release-share 0 --ttl-ms 600000
fi
connections=50
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--connections" ] && connections=${args[$((i + 1))]}
done
source loadtest/server.sh
scratch
config=()
if [ "${FSYNC:-always}" != always ]; then
    printf '[storage]\nfsync = "%s"\n' "$FSYNC" >"$work/stockd.toml"
    config=(--config "$work/stockd.toml")
fi
start_server "$work/data" "$work/server.log" --http-listen "127.0.0.1:$HTTP_PORT" "${config[@]}"
./target/release/stockd-loadtest --server "127.0.0.1:$PORT" --warmup 2 \
    --duration $((DURATION + 2)) --quiet --json "$work/r.json" --report "$work/r.html" "$@" \
    >"$work/load.out" 2>&1 &
load=$!
# Read everything once the warm-up (and the setup) is over, and again DURATION s later.
sample() {
    curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk '
        /^stockd_wal_records_total / { r = $2 } /^stockd_wal_fsyncs_total / { f = $2 }
        /^stockd_wal_fsync_seconds_total / { fs = $2 }
        /^stockd_commit_wait_seconds_sum / { cw = $2 } /^stockd_request_seconds_sum / { rs = $2 }
        /^stockd_request_seconds_count / { rc = $2 }
        END { printf "%s %s %s %s %s %s", r, f, fs, cw, rs, rc }'
    awk '{ printf " %s %s", $14, $15 }' "/proc/$server/stat"
    awk '{ printf " %s %s", $14, $15 }' "/proc/$load/stat"
    date +" %s.%N"
}
until grep -q . "$work/load.out" 2>/dev/null || [ "$(curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" \
    | awk '/^stockd_request_seconds_count / {print ($2 > 1000)}')" = 1 ]; do
    sleep 0.2
done
sleep 1
before=$(sample)
sleep "$DURATION"
after=$(sample)
wait "$load" || true
load=""
grep -E "^(throughput|latency|verdict)" "$work/load.out" || true
awk -v b="$before" -v a="$after" -v conns="$connections" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(b, x, " "); split(a, y, " ")
    records = y[1] - x[1]; fsyncs = y[2] - x[2]; fsync_s = y[3] - x[3]
    wait_s = y[4] - x[4]; server_s = y[5] - x[5]; requests = y[6] - x[6]; secs = y[11] - x[11]
    if (requests == 0) { print "nothing measured"; exit 1 }
    rate = requests / secs
    printf "requests        %.0f/s over %.1f s (server counters)\n", rate, secs
    if (fsyncs == 0)
        printf "group commit    no fdatasync in the measured seconds (%.0f records/s)\n", records / secs
    else
        printf "group commit    %.1f records per fdatasync, %.0f fdatasyncs/s, %.0f us per fdatasync, %.0f us per round\n",
            records / fsyncs, fsyncs / secs, fsync_s / fsyncs * 1e6, secs / fsyncs * 1e6
    cycle = conns / rate * 1e6
    printf "client cycle    %.0f us (%d connections / throughput): %.0f us waiting for the commit in the server, %.0f us other server time, %.0f us outside the server\n",
        cycle, conns, wait_s / requests * 1e6, (server_s - wait_s) / requests * 1e6, cycle - server_s / requests * 1e6
    ops = requests
    printf "cpu per op      server %.1f us user + %.1f us kernel, load test %.1f us user + %.1f us kernel (%.2f + %.2f cores)\n",
        (y[7] - x[7]) / hz / ops * 1e6, (y[8] - x[8]) / hz / ops * 1e6,
        (y[9] - x[9]) / hz / ops * 1e6, (y[10] - x[10]) / hz / ops * 1e6,
        ((y[7] - x[7]) + (y[8] - x[8])) / hz / secs, ((y[9] - x[9]) + (y[10] - x[10])) / hz / secs
}'
