#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, after replaying the kept regression inputs.
#   fuzz/run.sh [seconds per target]      (default: $STOCKD_FUZZ_SECONDS or 8)
# Works on the stable toolchain: RUSTC_BOOTSTRAP lets cargo-fuzz's build flags through, and
# `--sanitizer none` needs no nightly sanitizer runtime (Rust code is memory-safe; the targets
# look for panics, hangs, runaway allocation and broken round trips). A crash is saved under
# fuzz/artifacts/<target>/; fix it, then copy the input to fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-${STOCKD_FUZZ_SECONDS:-8}}"
export RUSTC_BOOTSTRAP=1
targets=(frames batch wal_recovery snapshot config)
cargo fuzz build --sanitizer none
for target in "${targets[@]}"; do
    flags=(-rss_limit_mb=2048 -timeout=10)
    if compgen -G "regressions/$target/*" >/dev/null; then
        echo "== $target: regression inputs"
        cargo fuzz run "$target" --sanitizer none "regressions/$target"/* -- "${flags[@]}" -runs=1
    fi
    echo "== $target: ${seconds} s"
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    if ! cargo fuzz run "$target" --sanitizer none "corpus/$target" -- "${flags[@]}" \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
    rm -f "$log"
done
