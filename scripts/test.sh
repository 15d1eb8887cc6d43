#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs every check: formatting, clippy,
# unit tests, and integration tests that boot real guests under KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
kernel/build.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
# cargo-nextest (on the machine or from crates.io) runs the tests of every
# binary side by side; .config/nextest.toml orders the long boots first.
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --test-threads="${TEST_THREADS:-2}"
cargo test --workspace --doc
# Every fuzz target briefly, 20 s each (nightly + cargo-fuzz): a smoke test
# that the targets build and the stored corpus still runs clean under ASan.
fuzz/run.sh "${FUZZ_SECONDS:-20}"
