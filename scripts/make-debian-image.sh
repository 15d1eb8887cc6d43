#!/usr/bin/env bash
# Builds a stock Debian 12 (bookworm) systemd image with debootstrap and packs it
# as a one-layer OCI image layout, for minivm's "big fat VM" tests and bench:
#   scripts/make-debian-image.sh            build if needed, print the layout dir
#   scripts/make-debian-image.sh --rootfs   also print the unpacked rootfs dir
#
# The image is what a user would build (no minivm-specific hacks): systemd, udev,
# dbus, iproute2, ping, nc, procps; root's password is "minivm" (a test image);
# systemd-networkd gives eth0 the address 10.0.2.15/24 (gateway 10.0.2.1), the
# addresses the network tests use on the host side of the tap.
#
# Result, cached by a hash of the package list and this script, published with a
# rename so a kill -9 leaves no half entry:
#   ${XDG_CACHE_HOME:-~/.cache}/minivm-test/debian/<hash>/{oci,rootfs}
# Needs root (debootstrap, device nodes); installs debootstrap when missing.
set -euo pipefail

suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd-sysv,udev,dbus,iproute2,iputils-ping,netcat-openbsd,procps,less,kmod

log() { echo "make-debian-image.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap creates device nodes and owned files)"
self_hash=$(sha256sum "$0" | cut -c1-64)
key=$(printf '%s\n' "$suite" "$packages" "$self_hash" | sha256sum | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/minivm-test/debian
final=$cache/$key

print_result() {
    echo "$final/oci"
    [ "${1:-}" = "--rootfs" ] && echo "$final/rootfs"
    return 0
}
if [ -d "$final/oci" ]; then
    print_result "${1:-}"
    exit 0
fi

if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ]; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends debootstrap >&2; } || die "apt-get install debootstrap failed"
fi
export PATH=$PATH:/usr/sbin:/sbin

mkdir -p "$cache"
work=$(mktemp -d "$cache/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

log "debootstrap $suite ($packages); takes a few minutes"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# A VM you can log in to and that networks; all of it is ordinary configuration.
echo debian-minivm > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian-minivm\n' > "$root/etc/hosts"
chroot "$root" sh -c 'echo root:minivm | chpasswd'
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/20-eth.network" <<'EOF'
[Match]
Name=eth* en*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.1
EOF
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
# The root filesystem comes from the kernel command line; no fstab entries.
: > "$root/etc/fstab"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# debootstrap leaves the host's resolv.conf; an image should not carry it.
rm -f "$root/etc/resolv.conf"

# Pack as a one-layer OCI image layout (gzip layer), by hand: no daemon needed.
oci=$work/oci
mkdir -p "$oci/blobs/sha256"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -c1-64)
gzip -1 -n -c "$work/layer.tar" > "$work/layer.tar.gz"
rm -f "$work/layer.tar"
layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -c1-64)
layer_size=$(stat -c %s "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$oci/blobs/sha256/$layer_digest"

blob_digest= blob_size=
blob() { # writes $1 as a blob; sets blob_digest and blob_size
    printf '%s' "$1" > "$work/blob.tmp"
    blob_digest=$(sha256sum "$work/blob.tmp" | cut -c1-64)
    blob_size=$(stat -c %s "$work/blob.tmp")
    mv "$work/blob.tmp" "$oci/blobs/sha256/$blob_digest"
}
blob "{\"architecture\":\"amd64\",\"os\":\"linux\",\
\"config\":{\"Cmd\":[\"/sbin/init\"],\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"]},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]}}"
blob "{\"schemaVersion\":2,\
\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$blob_digest\",\"size\":$blob_size},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}"
man_digest=$blob_digest man_size=$blob_size
printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$oci/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"digest\":\"sha256:$man_digest\",\"size\":$man_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"latest\"}}]}" \
    > "$oci/index.json"

rm -f "$work/debootstrap.log"
mv "$work" "$final"
trap - EXIT
log "built $final"
print_result "${1:-}"
