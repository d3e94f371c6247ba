#!/usr/bin/env bash
# The baseline stockd is built to beat: Redis 7 with a Lua reserve script, on this machine,
# next to stockd on the same workload (one hot SKU, 50 connections x 1 request in flight,
# single-unit holds with a TTL). Redis runs with its append-only file and `appendfsync
# always` (every write synced before the reply, like stockd's default) and `everysec`; its
# load comes from `redis-benchmark` (C). stockd runs as in targets.sh. Bounded: each Redis run
# is REQUESTS requests, each stockd run DURATION s; every process it starts is stopped by PID.
#
#   loadtest/redis-compare.sh                    # needs redis-server and redis-benchmark
#   RUNS=3 REQUESTS=300000 loadtest/redis-compare.sh
#
# The script (what a team would write): refuse a retry with an id that exists, refuse when
# reserved + qty would pass the stock, else count the units as reserved, store the hold with
# its TTL and index it by deadline for the job that gives expired holds back.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-17981}
REDIS_PORT=$((PORT + 1))
RUNS=${RUNS:-3}
REQUESTS=${REQUESTS:-300000}
DURATION=${DURATION:-5}
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || {
        echo "needs $tool (Debian: apt-get install redis-server redis-tools)" >&2
        exit 1
    }
done
source loadtest/server.sh
work=$(mktemp -d)
server=""
redis=""
stop_redis() {
    if [ -n "$redis" ]; then
        kill -TERM "$redis" 2>/dev/null || true
        wait "$redis" 2>/dev/null || true
        redis=""
    fi
}
trap 'stop_redis; stop_server; rm -rf "$work"' EXIT

RESERVE_LUA='
if redis.call("EXISTS", KEYS[2]) == 1 then return 2 end
local qty = tonumber(ARGV[1])
local stock = redis.call("HMGET", KEYS[1], "on_hand", "reserved")
if tonumber(stock[2] or "0") + qty > tonumber(stock[1] or "0") then return 0 end
redis.call("HINCRBY", KEYS[1], "reserved", qty)
redis.call("SET", KEYS[2], qty, "PX", ARGV[2])
local now = redis.call("TIME")
local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[2])
redis.call("ZADD", KEYS[1] .. ":deadlines", deadline, KEYS[2])
return 1'

redis_run() {
    local fsync=$1
    rm -rf "$work/redis" && mkdir -p "$work/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work/redis" --save "" \
        --appendonly yes --appendfsync "$fsync" --logfile "$work/redis.log" &
    redis=$!
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$REDIS_PORT" HSET '{hot}' on_hand 1000000000 reserved 0 >/dev/null
    local sha
    sha=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD "$RESERVE_LUA")
    # Both keys share a hash tag, as Redis Cluster would need.
    # CSV: test, requests/s, then avg, min, p50, p95, p99, max latency in ms.
    redis-benchmark -p "$REDIS_PORT" -c 50 -P 1 -n "$REQUESTS" -r 1000000000 --csv \
        EVALSHA "$sha" 2 '{hot}' '{hot}:hold:__rand_int__' 1 600000 | tail -1 | tr -d '"' \
        | awk -F, '{ printf "%d ops/s, p50 %s ms, p99 %s ms", $2, $5, $7 }'
    local held
    held=$(redis-cli -p "$REDIS_PORT" HGET '{hot}' reserved)
    stop_redis
    [ "$held" -gt 0 ] || { echo "redis reserved nothing: the script failed" >&2; exit 1; }
}

stockd_run() {
    start_server "$work/stockd-$1" "$work/server.log"
    ./target/release/stockd-loadtest --server "127.0.0.1:$PORT" --duration "$DURATION" \
        --warmup 1 --quiet --json "$work/r.json" --report "$work/r.html" flash-sale \
        --stock 1000000000 --confirm-share 0 --release-share 0 --ttl-ms 600000 \
        | awk '/^throughput/ { ops = $2 } /^latency/ { p50 = $3; p99 = $9 }
               /^verdict/ { v = $2 } END { printf "%d ops/s, p50 %s ms, p99 %s ms, %s\n", ops, p50, p99, v }'
    stop_server
}

echo "on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(redis-server --version | cut -d' ' -f1-3)"
for run in $(seq "$RUNS"); do
    echo "run $run"
    echo "  redis appendfsync always:   $(redis_run always), $REQUESTS requests"
    echo "  redis appendfsync everysec: $(redis_run everysec), $REQUESTS requests"
    echo "  stockd fsync always:        $(stockd_run "$run")"
done
