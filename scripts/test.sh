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
cargo test --workspace -- --test-threads="${TEST_THREADS:-2}"
# Every fuzz target briefly (nightly + cargo-fuzz): a smoke test that the
# targets build and the stored corpus still runs clean under ASan.
fuzz/run.sh "${FUZZ_SECONDS:-60}"
