#!/usr/bin/env bash
# Installs the Debian 12 packages minivm's build, demo and tests need.
# Rust comes from rustup (https://rustup.rs) and is not installed here.
set -euo pipefail
pkgs=(busybox-static e2fsprogs cpio qemu-system-x86 build-essential python3 skopeo umoci docker-registry containerd)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -q >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust with rustup first" >&2; exit 1; }
