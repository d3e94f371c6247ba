#!/usr/bin/env bash
# Soak: a long open-loop run with holds expiring continuously, sampling the server's memory
# (RSS from /proc) over time, then checking that it plateaus. Not run in CI (it takes minutes).
#
#   loadtest/soak.sh                                  # 600 s at 5 000 reserves/s
#   STOCKD_SOAK_SECONDS=1800 STOCKD_SOAK_RATE=20000 loadtest/soak.sh
#
# The server remembers finished reservations for `engine.retention_ms` (set to 60 s here, so
# the steady state is reached within the run); holds last 1 s; 30 % are released, the rest
# expire; none are confirmed (confirmed orders are kept until shipped, by design). Memory
# "plateaus" if the median anonymous RSS (the heap; mapped log segments the snapshotter reads
# are page cache and come and go) of the second half of the run is within 10 % (+ 8 MiB) of
# the median from 120 s (two retention periods, and the first snapshot, have passed) to
# half-time. Medians, because writing a snapshot briefly needs memory for its image (~60 MiB
# over ~207 MiB on 2026-11-30), and whether a 10 s sample catches that is chance; the highest
# samples are printed too. The load test's verdict
# (told of the retention) must pass as well. Bounded: the load test stops by itself; the
# server it starts is stopped by PID. Writes loadtest/soak-<date>.csv (or $STOCKD_SOAK_CSV)
# with RSS split into heap (anonymous) and mapped files, and the server's reservation count.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${STOCKD_SOAK_SECONDS:-600}
RATE=${STOCKD_SOAK_RATE:-5000}
PORT=${PORT:-17980}
HTTP_PORT=$((PORT + 1))
EVERY=${STOCKD_SOAK_SAMPLE_SECONDS:-10}
source loadtest/server.sh
scratch
cat >"$work/stockd.toml" <<TOML
[engine]
retention_ms = 60000
TOML
start_server "$work/data" "$work/server.log" --config "$work/stockd.toml" \
    --http-listen "127.0.0.1:$HTTP_PORT"
csv=${STOCKD_SOAK_CSV:-loadtest/soak-$(date -u +%Y-%m-%d).csv}
# RSS split into anonymous memory (the heap) and mapped files (log segments being read), the
# number of reservations the server remembers and the bytes it has allocated (its own gauges),
# to tell growth of the data from fragmentation.
echo "seconds,rss_kib,anon_kib,file_kib,reservations,heap_allocated_kib" >"$csv"
./target/release/stockd-loadtest flash-sale --server "127.0.0.1:$PORT" --connections 20 \
    --rate "$RATE" --warmup 1 --duration "$SECONDS_TOTAL" --stock 1000000000 --ttl-ms 1000 \
    --confirm-share 0 --release-share 0.3 --retention-ms 60000 --quiet \
    --json "$work/soak.json" --report "$work/soak.html" >"$work/loadtest.out" 2>&1 &
load=$!
start=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
    mem=$(awk '/^(VmRSS|RssAnon|RssFile)/ {printf ",%s", $2}' "/proc/$server/status")
    gauges=$(curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk '
        /^stockd_reservations / { held = $2 }
        /^stockd_heap_allocated_bytes / { heap = int($2 / 1024) }
        END { printf ",%s,%s", held, heap }' || true)
    echo "$(( $(date +%s) - start ))$mem${gauges:-,,}" >>"$csv"
    # Sleep in small steps so the loop ends soon after the load test does.
    for _ in $(seq "$EVERY"); do kill -0 "$load" 2>/dev/null || break; sleep 1; done
done
# The verdict (told of the 60 s retention, so forgotten reservations are expected) must pass
# too: no oversell, counters agree with what the clients were told.
verdict=0
wait "$load" || verdict=$?
grep -E "^(throughput|verdict)|^  (ok|FAIL) " "$work/loadtest.out" | cut -c1-160 || true
plateau=0
awk -F, -v total="$SECONDS_TOTAL" '
    # Median of the n values in v (sorted in place, insertion sort: a few hundred samples).
    function median(v, n,    i, j, x) {
        for (i = 2; i <= n; i++) {
            x = v[i]
            for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]
            v[j + 1] = x
        }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    NR > 1 {
        t = $1; rss = $3
        if (t >= 120 && t < total * 0.5) { a[++na] = rss; if (rss > peak_a) peak_a = rss }
        if (t >= total * 0.5) { b[++nb] = rss; if (rss > peak_b) peak_b = rss }
        printf "%6d s  RSS %8.1f MiB, of it heap %8.1f MiB\n", t, $2 / 1024, rss / 1024
    }
    END {
        if (na == 0 || nb == 0) { print "run too short to judge (needs > 250 s)"; exit 2 }
        before = median(a, na); last = median(b, nb)
        limit = before * 1.10 + 8192
        printf "highest heap RSS (a snapshot being written, when a sample catches one) from 120 s to half-time: %.1f MiB; in the second half: %.1f MiB\n", peak_a / 1024, peak_b / 1024
        printf "median heap RSS from 120 s to half-time: %.1f MiB; in the second half: %.1f MiB (limit %.1f MiB)\n", before / 1024, last / 1024, limit / 1024
        if (last > limit) { print "memory did not plateau"; exit 1 }
        print "memory plateaus"
    }' "$csv" || plateau=$?
if [ "$verdict" -ne 0 ]; then echo "the load test's verdict failed (exit $verdict)"; fi
[ "$verdict" -eq 0 ] && [ "$plateau" -eq 0 ]
