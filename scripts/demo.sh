#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install packages, build the guest
# kernel (cached) and minivm, make a demo disk, and boot it on this terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
kernel/build.sh >/dev/null
cargo build --release
mkdir -p target/demo
[ -f target/demo/demo.raw ] || scripts/make-demo-image.sh target/demo/demo.raw >/dev/null
echo "Booting target/demo/demo.raw (Ctrl-A x quits)..." >&2
exec target/x86_64-unknown-linux-gnu/release/minivm run --image target/demo/demo.raw "$@"
