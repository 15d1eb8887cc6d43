#!/usr/bin/env bash
# Conversion benchmark: a debootstrap'ed Debian bookworm with systemd, packed
# as a one-layer OCI image (built once, cached in target/bench), converted by
#   (1) minivm convert (cold cache), and
#   (2) umoci unpack --rootless + mkfs.ext4 -d (the usual tool chain),
# interleaved, BENCH_CONVERT_ROUNDS (3) rounds; prints the medians [spread], the
# ratio, and minivm's warm-cache time, and appends the table to docs/bench-log.md.
# Needs root for debootstrap (first run only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
for p in debootstrap umoci; do
    command -v $p >/dev/null || { sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo; $sudo apt-get install -y -q --no-install-recommends debootstrap umoci >&2; }
done
cargo build --release -q
work=$(pwd)/target/bench/convert
mkdir -p "$work"
root=$work/debian-root
if [ ! -f "$work/debian.done" ]; then
    rm -rf "$root"
    echo "bench: debootstrap bookworm with systemd (first run only)..." >&2
    debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,dbus bookworm "$root" http://deb.debian.org/debian >&2
    touch "$work/debian.done"
fi
layout=$work/oci
if [ ! -f "$work/oci.done" ]; then
    rm -rf "$layout"
    python3 - "$root" "$layout" <<'PY'
import gzip, hashlib, json, os, subprocess, sys
root, layout = sys.argv[1], sys.argv[2]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)
tar = subprocess.run(["tar", "-C", root, "--numeric-owner", "--xattrs", "-cf", "-", "."], check=True, stdout=subprocess.PIPE).stdout
diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
layer, lsize = put(gzip.compress(tar, 6))
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/sbin/init"]},
                     "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
cdig, csize = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": lsize}]}).encode()
mdig, msize = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": mdig, "size": msize, "annotations": {"org.opencontainers.image.ref.name": "bookworm"}}]},
    open(os.path.join(layout, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(layout, "oci-layout"), "w"))
print(f"bench: image {mdig}: {len(tar) >> 20} MiB of tar, {lsize >> 20} MiB gzip", file=sys.stderr)
PY
    touch "$work/oci.done"
fi
size=2G
cache=$work/cache
rounds=${BENCH_CONVERT_ROUNDS:-3}
cold=()
peer=()
# Interleaved: minivm cold (an empty cache), then umoci + mkfs.ext4, each round.
for ((r = 0; r < rounds; r++)); do
    rm -rf "$cache" "$work/minivm.raw" "$work/mkfs.raw" "$work/bundle"
    sync
    t0=$(date +%s.%N)
    XDG_CACHE_HOME=$cache target/x86_64-unknown-linux-gnu/release/minivm convert -q "oci:$layout:bookworm" -o "$work/minivm.raw" --size $size
    t1=$(date +%s.%N)
    umoci unpack --rootless --image "$layout:bookworm" "$work/bundle" >/dev/null
    mkfs.ext4 -q -F -d "$work/bundle/rootfs" "$work/mkfs.raw" $size >/dev/null
    t2=$(date +%s.%N)
    cold+=("$(echo "$t1 - $t0" | bc -l)")
    peer+=("$(echo "$t2 - $t1" | bc -l)")
done
# Warm: the reference (with the same --size: the size is part of the cache
# key) resolves to the cached disk; no layer is read.
warm=()
for i in 1 2 3 4 5; do
    a=$(date +%s.%N)
    XDG_CACHE_HOME=$cache target/x86_64-unknown-linux-gnu/release/minivm pull -q --size $size "oci:$layout:bookworm" >/dev/null
    b=$(date +%s.%N)
    warm+=("$(echo "($b - $a) * 1000" | bc -l)")
done
e2fsck -fn "$work/minivm.raw" >/dev/null && fsck=clean || fsck="NOT CLEAN"
python3 - "$fsck" "${cold[*]}" "${peer[*]}" "${warm[*]}" <<'PY'
import statistics, sys
sys.path.insert(0, "bench")
import summary
fsck = sys.argv[1]
cold, peer, warm = ([float(x) for x in a.split()] for a in sys.argv[2:5])
m, b = statistics.median(cold), statistics.median(peer)
print(f"minivm convert (cold):           {m:.2f} s  (e2fsck: {fsck})")
print(f"umoci unpack + mkfs.ext4 -d:     {b:.2f} s")
print(f"speed-up: {b / m:.2f}x (goal: at least 2x)")
print(f"warm cache (pull, median of 5):  {statistics.median(warm):.1f} ms (goal: under 50 ms)")
table = summary.Table("convert", "bench/convert.sh", peer="umoci unpack + mkfs.ext4 -d")
table.row("Debian bookworm with systemd, cold conversion", "s", cold, peer, "at most 0.5")
table.row("warm cache (`minivm pull`)", "ms", warm, [], "under 50 ms")
table.note(f"e2fsck -fn of minivm's disk: {fsck}")
table.done()
PY
rm -rf "$work/bundle" "$work/mkfs.raw"
