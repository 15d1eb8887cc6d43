#!/usr/bin/env bash
# Builds minivm's guest kernel (bzImage + vmlinux) from Debian's kernel source
# package, with minivm.config on top of tinyconfig and the patches in patches/.
#
# The result is cached under ${XDG_CACHE_HOME:-~/.cache}/minivm/kernel/<hash>/,
# where <hash> covers the source version, the config, the patches and this
# script; "default" in that directory points at the newest build, and is what
# minivm boots when --kernel is not given. A warm run takes a second.
#
#   kernel/build.sh            build if needed, print the cache directory
#   kernel/build.sh --no-apt   never call apt (fail if something is missing)
#   KERNEL_JOBS=N              parallel make jobs (default: nproc)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src_pkg=linux-source-6.12
build_deps=(build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils patch)
use_apt=1
[ "${1:-}" = "--no-apt" ] && use_apt=0

log() { echo "kernel/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

missing=()
for p in "$src_pkg" "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ $use_apt = 1 ] || die "missing packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    log "installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
        die "apt-get install ${missing[*]} failed"
fi

version=$(dpkg-query -W -f='${Version}' "$src_pkg")
tarball=/usr/src/$src_pkg.tar.xz
[ -f "$tarball" ] || die "$tarball not found (is $src_pkg installed?)"

hash=$( {
    echo "$src_pkg $version"
    cat "$here/minivm.config" "$here"/patches/*.patch "$here/build.sh"
} | sha256sum | cut -c1-16)

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/minivm/kernel
out=$cache_root/$hash
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    ln -sfn "$hash" "$cache_root/.default.$$" && mv -T "$cache_root/.default.$$" "$cache_root/default"
    log "cached: $out"
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/.build-$hash.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building $src_pkg $version into $out (cold build: ~10 min on 2 cores)"

tar -C "$work" -xf "$tarball"
tree=$work/$src_pkg
for p in "$here"/patches/*.patch; do
    log "applying $(basename "$p")"
    patch -d "$tree" -p1 --quiet --forward < "$p" || die "patch $p does not apply to $src_pkg $version"
done

make -C "$tree" -s ARCH=x86_64 tinyconfig >&2
"$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$here/minivm.config" >/dev/null
make -C "$tree" -s ARCH=x86_64 olddefconfig >&2

# Kconfig silently drops options whose dependencies are unmet: insist on each.
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) want=$line ;;
        "# CONFIG_"*" is not set") want=$line ;;
        *) continue ;;
    esac
    name=${want#\# }; name=${name%%[= ]*}
    if [[ "$want" == "#"* ]]; then
        grep -q "^$name=[ym]" "$tree/.config" && { log "config: $name should be off"; bad=1; }
    else
        grep -qxF "$want" "$tree/.config" || { log "config: wanted $want, got: $(grep "^$name=\|^# $name " "$tree/.config" || echo unset)"; bad=1; }
    fi
done < "$here/minivm.config"
[ $bad = 0 ] || die "the kernel config lost options (see above)"

make -C "$tree" -s ARCH=x86_64 -j"${KERNEL_JOBS:-$(nproc)}" bzImage >&2

stage=$work/out
mkdir -p "$stage"
cp "$tree/arch/x86/boot/bzImage" "$tree/vmlinux" "$tree/.config" "$stage/"
echo "$src_pkg $version" > "$stage/SOURCE"
# Publish atomically: a killed build leaves only a .build-* directory behind.
rm -rf "$out"
mv -T "$stage" "$out"
ln -sfn "$hash" "$cache_root/.default.$$" && mv -T "$cache_root/.default.$$" "$cache_root/default"
# Clear leftovers of killed builds.
find "$cache_root" -maxdepth 1 -name '.build-*' -mmin +240 -exec rm -rf {} + 2>/dev/null || true
log "built: $out"
echo "$out"
