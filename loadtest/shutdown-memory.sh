#!/usr/bin/env bash
# The server's memory at a clean shutdown, which writes a final snapshot: starts a fresh
# release server, fills it with hot-SKU holds in batches for DURATION seconds (default 5; about
# two million holds on a 2-core host), reads its resident memory (now, and the peak so far),
# stops it with SIGTERM and reads the peak over its whole life. Bounded; every process it
# starts is stopped by PID.
#
#   loadtest/shutdown-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-17975}
DURATION=${DURATION:-5}
source loadtest/server.sh
scratch
start_server "$work/data" "$work/server.log" --http-listen "127.0.0.1:0"
./target/release/stockd-loadtest --server "127.0.0.1:$PORT" --warmup 1 --duration "$DURATION" \
    --quiet --json "$work/r.json" --report "$work/r.html" flash-sale --stock 1000000000 \
    --confirm-share 0 --release-share 0 --ttl-ms 600000 --connections 4 --in-flight 8 \
    --batch 256 >"$work/load.out" 2>&1
grep -E "^(throughput|verdict)" "$work/load.out"
kib() { awk -v field="$1:" '$1 == field { print $2 }' "/proc/$server/status"; }
echo "before shutdown: resident $(($(kib VmRSS) / 1024)) MiB, peak so far $(($(kib VmHWM) / 1024)) MiB"
# The peak over the whole life, final snapshot included: sampled until the process has exited
# (a zombie's status has no memory lines), for at most 120 s.
kill -TERM "$server"
peak=0
for _ in $(seq 2400); do
    hwm=$(kib VmHWM 2>/dev/null || true)
    [ -z "$hwm" ] && break
    [ "$hwm" -gt "$peak" ] && peak=$hwm
    sleep 0.05
done
wait "$server" || true
server=""
echo "peak over its life, shutdown included: $((peak / 1024)) MiB"
ls -l "$work/data" | awk '/snap-/ { print "snapshot", $NF, $5, "bytes" }'
