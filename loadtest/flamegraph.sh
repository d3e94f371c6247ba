#!/usr/bin/env bash
# A flame graph of the server under load: starts a fresh release server (fsync "always"), runs
# a load test against it, records the server's stacks with `perf` for RECORD_SECONDS (default
# 4) in the middle of the run, and renders them with inferno as an SVG (OUT, default
# flamegraph-server.svg). Needs `perf` (Debian: linux-perf) and inferno (`cargo install
# inferno`). Bounded; every process it starts is stopped by PID.
#
#   loadtest/flamegraph.sh                                  # hot SKU, 50 connections x 1
#   OUT=batch.svg loadtest/flamegraph.sh flash-sale --stock 1000000000 --confirm-share 0 \
#       --release-share 0 --ttl-ms 600000 --connections 4 --in-flight 8 --batch 256
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool is missing: install linux-perf (perf) and run 'cargo install inferno'" >&2
        exit 1
    fi
done
PORT=${PORT:-17995}
RECORD_SECONDS=${RECORD_SECONDS:-4}
OUT=${OUT:-flamegraph-server.svg}
if [ "$#" -eq 0 ]; then
    set -- flash-sale --stock 1000000000 --confirm-share 0 --release-share 0 --ttl-ms 600000
fi
source loadtest/server.sh
scratch
start_server "$work/data" "$work/server.log" --http-listen "127.0.0.1:0"
./target/release/stockd-loadtest --server "127.0.0.1:$PORT" --warmup 2 \
    --duration $((RECORD_SECONDS + 3)) --quiet "$@" >"$work/load.out" 2>&1 &
load=$!
# Past the setup and the warm-up: record the middle of the measured run.
sleep 3
perf record -F 499 --call-graph dwarf,16384 -o "$work/perf.data" -p "$server" \
    -- sleep "$RECORD_SECONDS" >/dev/null 2>&1
wait "$load" || true
load=""
grep -E "^(throughput|latency|verdict)" "$work/load.out" || true
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
inferno-flamegraph --title "stockd serve: $*" --minwidth 0.2 <"$work/folded" >"$OUT"
echo "flame graph: $OUT ($(wc -l <"$work/folded") distinct stacks)"
