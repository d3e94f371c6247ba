#!/usr/bin/env bash
# Retakes docs/dashboard.png: a fresh server on loopback ports 17878/17879 with a temporary data
# directory, a few audited admin changes, a 40 s flash sale from the load-test harness, and a
# headless Chromium screenshot 25 s in. Needs Debian's chromium. Stops what it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p stockd -p stockd-loadtest
data=$(mktemp -d)
profile=$(mktemp -d)
# A throw-away loopback server: no API keys (--no-auth), so the page needs no login.
./target/release/stockd serve --data-dir "$data" --listen 127.0.0.1:17878 \
    --http-listen 127.0.0.1:17879 --no-auth > "$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data" "$profile"' EXIT
until curl -sf 127.0.0.1:17879/readyz > /dev/null; do sleep 0.1; done
cli() { ./target/release/stockd "$@" --server 127.0.0.1:17878 > /dev/null; }
for sku in TEE-M TEE-L CAP-BLACK MUG-STEEL HOODIE-XL; do cli stock set "$sku" 400; done
api() { curl -sf -X "$1" "127.0.0.1:17879/api/v1/skus/$2" -H 'content-type: application/json' -d "$3" > /dev/null; }
api POST TEE-M/adjustments '{"delta": -3, "actor": "alice", "reason": "damaged in transit"}'
api PUT HOODIE-XL/safety-stock '{"safety_stock": 400, "actor": "bob", "reason": "hold back for exchanges"}'
api PUT MUG-STEEL/stock '{"on_hand": 380, "actor": "warehouse-2", "reason": "cycle count"}'
./target/release/stockd-loadtest flash-sale --server 127.0.0.1:17878 --connections 8 --rate 1500 \
    --skus 6 --stock 30000 --ttl-ms 60000 --warmup 1 --duration 40 --quiet --prefix DROP- \
    --json "$data/result.json" --report "$data/report.html" > "$data/loadtest.log" 2>&1 &
load=$!
sleep 25
# --timeout lets the page receive its first live update before the shot.
timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1400,820 --timeout=3000 \
    --screenshot=docs/dashboard.png http://127.0.0.1:17879/ 2> /dev/null
wait $load
