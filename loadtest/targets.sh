#!/usr/bin/env bash
# Measures the performance targets of stockd on this machine: for each configuration, starts a
# fresh release server (durable, fsync "always", on its own temporary data directory), runs the
# load test 3 times, and prints the median throughput and p99, then which of the targets the
# measured configurations meet (issue 4: 100 000 reserves/s at 50 x 1 with p99 under 2 ms,
# 1 000 000/s in batches, a hot SKU at 80 % of 1 000 000 uniform SKUs or more, sold-out
# rejections at the reserve rate or more). Bounded: each run lasts
# warm-up + duration seconds; every process it starts is stopped by PID.
#
#   loadtest/targets.sh                          # all configurations, ~6 minutes
#   loadtest/targets.sh sold-out-50x1 checkout-50x1   # only these
#   DURATION=10 RUNS=5 loadtest/targets.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
RUNS=${RUNS:-3}
PORT=${PORT:-17979}
source loadtest/server.sh
scratch

measure() {
    local name=$1; shift
    selected "$name" || return 0
    local results=()
    for run in $(seq "$RUNS"); do
        start_server "$work/data-$name-$run" "$work/server.log" --http-listen 127.0.0.1:0
        local out
        out=$(./target/release/stockd-loadtest --server "127.0.0.1:$PORT" \
            --duration "$DURATION" --warmup 1 --quiet "$@" \
            --json "$work/$name-$run.json" --report "$work/$name-$run.html") || true
        stop_server
        local ops p99 verdict
        ops=$(sed -n 's/^throughput *\([0-9]*\).*/\1/p' <<<"$out")
        p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -1)
        verdict=$(sed -n 's/^verdict *//p' <<<"$out")
        results+=("$ops $p99 $verdict")
    done
    local line
    line=$(printf '%s\n' "${results[@]}" | sort -n | awk -v name="$name" -v n="$RUNS" '
        { ops[NR]=$1; p99[NR]=$2; v[NR]=$3; all=all $1 "/" $2 "ms/" $3 " " }
        END { m=int((n+1)/2); printf "%-28s median %8d ops/s  p99 %6s ms  %s  (runs: %s)\n", name, ops[m], p99[m], v[m], all }')
    echo "$line"
    median_ops[$name]=$(awk '{ print $3 }' <<<"$line")
    median_p99[$name]=$(awk '{ print $6 }' <<<"$line")
}
declare -A median_ops median_p99

# target DESCRIPTION AWK-CONDITION ROW...: prints whether the condition holds for the medians
# of the given rows (a, b, ... in order; pa, pb: their p99 in ms), if they were all measured.
target() {
    local what=$1 condition=$2
    shift 2
    local values=() row
    for row in "$@"; do
        [ -n "${median_ops[$row]:-}" ] || return 0
        values+=("${median_ops[$row]}" "${median_p99[$row]}")
    done
    awk -v what="$what" -v values="${values[*]}" 'BEGIN {
        split(values, x, " "); a = x[1]; pa = x[2]; b = x[3]; pb = x[4]
        printf "%-62s %s\n", what, ('"$condition"') ? "met" : "NOT met"
    }'
}

if [ "$#" -gt 0 ]; then
    only="$*"
else
    only=""
fi
selected() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

echo "stockd targets on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), fsync always, $DURATION s per run, median of $RUNS"
measure hot-sku-reserve-50x1 flash-sale --stock 1000000000 --confirm-share 0 --release-share 0 --ttl-ms 600000
# Setting up 1 000 000 SKUs logs a million records, which makes the server take its first
# snapshot right after: a longer warm-up keeps that one-off out of the measured seconds.
measure uniform-1m-reserve-50x1 mixed --skus 1000000 --mix 100,0,0,0 --warmup 5
measure sold-out-50x1 sold-out
measure flash-sale-50x1 flash-sale
measure checkout-50x1 checkout --warmup 5
measure hot-sku-batch-4x8x256 flash-sale --stock 1000000000 --confirm-share 0 --release-share 0 --ttl-ms 600000 --connections 4 --in-flight 8 --batch 256
measure uniform-1m-batch-4x8x256 mixed --skus 1000000 --mix 100,0,0,0 --connections 4 --in-flight 8 --batch 256 --warmup 5

echo "targets (medians above):"
target "100 000 reserves/s at 50 x 1, p99 under 2 ms (hot SKU)" \
    'a >= 100000 && pa < 2' hot-sku-reserve-50x1
target "1 000 000 reserves/s in batch frames (hot SKU)" 'a >= 1000000' hot-sku-batch-4x8x256
target "1 000 000 reserves/s in batch frames (1 000 000 SKUs)" 'a >= 1000000' \
    uniform-1m-batch-4x8x256
target "hot SKU at >= 80 % of 1 000 000 uniform SKUs (50 x 1)" 'a >= 0.8 * b' \
    hot-sku-reserve-50x1 uniform-1m-reserve-50x1
target "sold-out rejections at >= the hot-SKU reserve rate (50 x 1)" 'a >= b' \
    sold-out-50x1 hot-sku-reserve-50x1
