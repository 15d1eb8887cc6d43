#!/usr/bin/env bash
# Makes a small bootable raw ext4 disk with busybox-static, without root:
#   scripts/make-demo-image.sh OUT.raw [SIZE]
# Its /sbin/init mounts /proc, /sys and /dev, reports "boot finished" to minivm and
# runs a shell on the console; leaving the shell powers off, which ends minivm.
set -euo pipefail
out=${1:?usage: make-demo-image.sh OUT.raw [SIZE]}
size=${2:-32M}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,root,etc}
cp /bin/busybox "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do
    case "$a" in busybox|init|linuxrc) ;; *) ln -s busybox "$root/bin/$a" ;; esac
done
cat > "$root/sbin/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
hostname minivm
# Tell minivm that boot finished (port 0xf5; see minivm run --help).
printf '\001' | dd of=/dev/port bs=1 seek=245 count=1 2>/dev/null
echo
echo "Welcome to a minivm guest ($(uname -sr)). Leave the shell to power off; Ctrl-A x quits minivm."
setsid cttyhack /bin/sh -l
mount -o remount,ro / 2>/dev/null; sync
poweroff -f
INIT
chmod 755 "$root/sbin/init"
echo 'export PS1="minivm:\w# "' > "$root/etc/profile"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
rm -f "$out.tmp"
mkfs.ext4 -q -F >/dev/null -L minivm-demo -E root_owner=0:0 -d "$root" "$out.tmp" "$size"
mv "$out.tmp" "$out"
echo "$out"
