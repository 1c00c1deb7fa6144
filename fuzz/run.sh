#!/usr/bin/env bash
# Bounded fuzzing of the header and manifest parsers: `fuzz/run.sh SECONDS` splits
# SECONDS between the targets (default 60 in all) and fails if either finds a crash.
#
# cargo-fuzz wants a nightly toolchain for `-Zsanitizer=address`; only stable is
# installed here, so RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z flags (its
# rustlib ships the ASan runtime). Needs `cargo install cargo-fuzz` (done below when
# missing). The committed seeds live in fuzz/seeds/TARGET; the working corpus in
# fuzz/corpus/TARGET is gitignored and grows between local runs. A crash leaves its
# input in fuzz/artifacts/TARGET: add it to fuzz/seeds/TARGET (cargo test replays
# every seed) and fix the bug.
set -euo pipefail
cd "$(dirname "$0")"
total="${1:-60}"
targets=(header manifest)
per=$(( total / ${#targets[@]} ))
(( per >= 1 )) || per=1
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
cargo fuzz build -O 2>&1 | tail -n 3
mkdir -p target/logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "--- fuzz $t for ${per}s"
    status=0
    cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$per" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"target/logs/$t.log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "target/logs/$t.log" || true
    if (( status != 0 )); then
        tail -n 40 "target/logs/$t.log" >&2
        echo "fuzz $t: failed (exit $status); the input is in fuzz/artifacts/$t" >&2
        exit 1
    fi
done
