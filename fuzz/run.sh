#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, default 60.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain (cargo-fuzz builds with AddressSanitizer and
# libFuzzer); installs cargo-fuzz when it is missing. New inputs that reach
# new code are added to fuzz/corpus/TARGET/ (commit the useful ones after
# `cargo +nightly fuzz cmin TARGET`). A crash leaves its input in
# fuzz/artifacts/TARGET/; fix it, then keep that input as a regression test
# in fuzz/regressions/TARGET/ (the crates' unit tests replay both folders on
# stable). Exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build
mapfile -t targets < <(if [ $# -gt 0 ]; then printf '%s\n' "$@"; else cargo +nightly fuzz list; fi)
failed=()
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "corpus/$t"
    # -timeout: one input running 30 s is a hang worth a report.
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -timeout=30 \
        -rss_limit_mb=4096 -print_final_stats=1 2>"/tmp/minivm-fuzzlog-$t.txt"; then
        tail -n 40 "/tmp/minivm-fuzzlog-$t.txt"
        failed+=("$t")
    else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' \
            "/tmp/minivm-fuzzlog-$t.txt" || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
