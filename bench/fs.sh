#!/usr/bin/env bash
# virtio-fs benchmark, minivm against QEMU in one run: a metadata-heavy job in
# the guest over a debootstrap'ed Debian bookworm (minbase) directory shared
# read-only with the guest,
#   find: find /mnt -xdev | wc -l          (the whole tree: lookups, getattr, readdir)
#   tar:  tar -c -f - -C /mnt usr | wc -c  (the same plus open and read of every file)
# served by
#   (1) minivm's in-process virtio-fs (--share DIR:bench:ro), and
#   (2) qemu-system-x86_64 -M microvm -enable-kvm with vhost-user-fs-device and
#       Debian's virtiofsd (/usr/libexec/virtiofsd from the virtiofsd package when
#       installed, else /usr/lib/qemu/virtiofsd from qemu-system-common),
# with the same guest kernel (vmlinux), the same busybox initramfs and the same
# kernel command line. The initramfs mounts the share with -o ro and times each
# job inside the guest (/proc/uptime, 10 ms resolution; busybox-static's date has
# no %N), dropping the guest's caches before each job, and prints marker lines on
# the serial console; then it writes its status to port 0xf4 (minivm's exit port,
# QEMU's isa-debug-exit). Prints the times, the ratios minivm/QEMU (goal: <= 1),
# the time the host saw between each job's start and result markers, and each file
# server's CPU time (minivm's virtio-fs threads, virtiofsd's process) with their ratio,
# and minivm's FUSE requests by opcode (--fs-stats).
#
# First, without a guest, bench/fsdrive plays the requests a guest's FUSE client
# sends for five jobs (walk, tar, a small-file storm, a large sequential read and
# write) into the virtqueues of minivm's virtio-fs server and of virtiofsd (over
# vhost-user), interleaved and repeated, and prints each server's CPU for the same
# jobs and the requests each needed: the server-cost headline, which the emulated
# guest cannot blur. The
# guest runs after it give the requests a real guest makes and the guest times.
#
# The rootfs is built once (debootstrap, as root: sudo when not root) and cached in
# ${XDG_CACHE_HOME:-~/.cache}/minivm/bench/bookworm-rootfs. Before the VMs run, the
# host's page cache is warmed with the same jobs, so neither VMM pays for host disk.
#
#   bench/fs.sh
# Environment:
#   BENCH_FS_RUNS=N        jobs per boot, each cold in the guest (default 1; median reported)
#   BENCH_FS_SUBDIR=PATH   run both jobs on this subtree only, e.g. usr/share/doc (quicker)
#   BENCH_FS_FIND_SUBDIR=PATH, BENCH_FS_TAR_SUBDIR=PATH  the same for one job
#   BENCH_FS_TIMEOUT=S     limit per VM run, seconds (default 1800; 14400 on kvm-pvm hosts)
#   BENCH_FS_MEM=SIZE      guest memory, MiB or with M/G (default 512M)
#   BENCH_FS_VFSD_COUNT=1  run virtiofsd with debug logging and count its requests by
#                          opcode from its log (its CPU time is then not comparable:
#                          run once without, once with)
#   BENCH_FS_VMMS="minivm qemu"  which VMMs to run
#   BENCH_FS_DRIVE_ROUNDS=N  interleaved rounds of bench/fsdrive (default 5; 0 skips it)
#   BENCH_FS_GUEST=0       no guest runs, only bench/fsdrive (a minute or two)
#   BENCH_FS_MINIVM=PATH   use this minivm binary instead of building one
#   BENCH_FS_MIRROR=URL    Debian mirror for debootstrap (default: apt's configured one)
#   BENCH_FS_VERBOSE=1     boot without `quiet`, so the consoles show the whole kernel log
#                          (bench/boot-phases.py target/bench/fs/{minivm,qemu}.log lines them up)
# On kvm-pvm hosts (guest kernel ~100x slower, every guest syscall a costly exit) the
# full job takes hours: find / (~6,800 entries) ~8 min, but tar moves ~35 KB/s, so
# tar usr (~190 MB) ~1.5 h per VMM. There, e.g. BENCH_FS_TAR_SUBDIR=usr/share/doc
# (8 MB, ~4-6 min) with the full find is a ~30 minute run.
# Exit status: 0 when both VMMs were measured, 4 when only minivm was (the reason is
# printed), 1 on any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bench/fs.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

runs=${BENCH_FS_RUNS:-1}
vm_timeout=${BENCH_FS_TIMEOUT:-1800}
[ -n "${BENCH_FS_TIMEOUT:-}" ] || [ ! -e /sys/module/kvm_pvm ] || vm_timeout=14400
mem=${BENCH_FS_MEM:-512M}
vmms=${BENCH_FS_VMMS:-minivm qemu}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "BENCH_FS_RUNS must be a positive integer, not '$runs'"
drive_rounds=${BENCH_FS_DRIVE_ROUNDS:-5}
[[ $drive_rounds =~ ^[0-9]+$ ]] || die "BENCH_FS_DRIVE_ROUNDS must be a number, not '$drive_rounds'"
guest=${BENCH_FS_GUEST:-1}
[[ $guest =~ ^[01]$ ]] || die "BENCH_FS_GUEST must be 0 or 1, not '$guest'"
verbose=${BENCH_FS_VERBOSE:-0}
[[ $verbose =~ ^[01]$ ]] || die "BENCH_FS_VERBOSE must be 0 or 1, not '$verbose'"
[[ $vm_timeout =~ ^[1-9][0-9]*$ ]] || die "BENCH_FS_TIMEOUT must be seconds, not '$vm_timeout'"
case "$mem" in
    *[0-9]) mem_mib=$mem ;;
    *[mM]) mem_mib=${mem%?} ;;
    *[gG]) mem_mib=$(( ${mem%?} * 1024 )) ;;
    *) die "BENCH_FS_MEM: '$mem' is not a size like 512M or 1G" ;;
esac
[[ $mem_mib =~ ^[1-9][0-9]*$ ]] || die "BENCH_FS_MEM: '$mem' is not a size like 512M or 1G"
# subtree VAR DEFAULT: the relative path in $VAR (or DEFAULT), checked.
subtree() {
    local v=${!1:-$2}
    v=${v#/}
    v=${v%/}
    [[ $v =~ ^[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*$|^$ ]] ||
        die "$1 must be a plain path inside the rootfs (letters, digits, ._+-), not '${!1}'"
    case "/$v/" in */../* | */./*) die "$1 must not contain . or .. ('${!1}')" ;; esac
    echo "$v"
}
subdir=$(subtree BENCH_FS_SUBDIR "")
find_dir=$(subtree BENCH_FS_FIND_SUBDIR "$subdir")
tar_dir=$(subtree BENCH_FS_TAR_SUBDIR "${subdir:-usr}")
find_arg=/mnt${find_dir:+/$find_dir}
tar_arg=$tar_dir

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

# --- packages ----------------------------------------------------------------
need=()
for p in debootstrap qemu-system-x86 busybox-static cpio; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
        { $sudo apt-get update -q >&2 && $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${need[@]}" >&2; } ||
        die "apt-get install ${need[*]} failed"
fi
# The Rust virtiofsd is its own package from trixie on (bookworm has it only in
# backports); QEMU 7.2's C daemon from qemu-system-common is the fallback.
if [ ! -x /usr/libexec/virtiofsd ] && apt-cache show virtiofsd >/dev/null 2>&1; then
    log "installing virtiofsd"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends virtiofsd >&2 ||
        log "apt-get install virtiofsd failed; trying QEMU's own virtiofsd"
fi

# --- kernel and minivm -------------------------------------------------------
kernel_dir=$(kernel/build.sh)
vmlinux=$kernel_dir/vmlinux
[ -f "$vmlinux" ] || die "$vmlinux not found (kernel/build.sh printed $kernel_dir)"
if [ -n "${BENCH_FS_MINIVM:-}" ]; then
    minivm=$(realpath "$BENCH_FS_MINIVM")
else
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
    log "building minivm (cargo build --release -p vmm)"
    cargo build --release -q -p vmm
    minivm=$(realpath "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/minivm")
fi
[ -x "$minivm" ] || die "$minivm is not an executable"
if [ "$drive_rounds" != 0 ]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (or BENCH_FS_DRIVE_ROUNDS=0)"
    log "building bench/fsdrive (cargo build --release -p fsdrive)"
    cargo build --release -q -p fsdrive
    fsdrive=$(realpath "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/fsdrive")
fi

# --- the Debian rootfs (cached) ----------------------------------------------
cache=${XDG_CACHE_HOME:-$HOME/.cache}/minivm/bench
rootfs=$cache/bookworm-rootfs
logdir=$(pwd)/target/bench/fs
build_tmp=""
vfsd_pid=""
work=""
cleanup() {
    if [ -n "$work" ] && [ -f "$work/vm.pid" ]; then
        # A VM still running (this script was interrupted): stop it through its timeout.
        local p
        p=$(cat "$work/vm.pid")
        kill "$p" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    fi
    [ -z "$vfsd_pid" ] || { $sudo kill "$vfsd_pid" 2>/dev/null || true; wait "$vfsd_pid" 2>/dev/null || true; }
    if [ -n "$work" ]; then
        # Keep the consoles (host-time-stamped), stderr and virtiofsd's log of the last run.
        rm -rf "$logdir" && mkdir -p "$logdir" && cp "$work"/*.log "$work"/*.err "$logdir"/ 2>/dev/null || true
        $sudo rm -rf --one-file-system "$work"
    fi
    if [ -n "$build_tmp" ]; then
        # debootstrap mounts proc and sys in the target; never descend into them.
        for m in proc sys dev/pts dev; do $sudo umount -l "$build_tmp/root/$m" 2>/dev/null || true; done
        $sudo rm -rf --one-file-system "$build_tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ ! -d "$rootfs" ]; then
    mirror=${BENCH_FS_MIRROR:-}
    if [ -z "$mirror" ]; then
        # apt's configured Debian mirror (one-line or deb822 sources), not the security archive.
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
            grep -oE '(https?|ftp)://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
        mirror=${mirror:-http://deb.debian.org/debian}
    fi
    mkdir -p "$cache"
    build_tmp=$(mktemp -d "$cache/.bookworm-rootfs.XXXXXX")
    log "debootstrap --variant=minbase bookworm from $mirror (first run only, a few minutes)"
    if ! $sudo debootstrap --variant=minbase bookworm "$build_tmp/root" "$mirror" >&2; then
        mkdir -p "$logdir"
        cp "$build_tmp/root/debootstrap/debootstrap.log" "$logdir/debootstrap.log" 2>/dev/null || true
        die "debootstrap failed (its log: $logdir/debootstrap.log; mirror: BENCH_FS_MIRROR)"
    fi
    $sudo mv -T "$build_tmp/root" "$rootfs"
    $sudo rm -rf --one-file-system "$build_tmp"
    build_tmp=""
fi
[ -d "$rootfs/$find_dir" ] || die "$rootfs/$find_dir does not exist (find's directory)"
[ -d "$rootfs/$tar_dir" ] || die "$rootfs/$tar_dir does not exist (tar's directory)"

# Warm the host's page cache with the same jobs (and take the host's own times).
log "warming the host page cache over $rootfs/$find_dir and $rootfs/$tar_dir"
t0=$EPOCHREALTIME
host_entries=$($sudo find "$rootfs${find_dir:+/$find_dir}" -xdev | wc -l)
t1=$EPOCHREALTIME
host_bytes=$($sudo tar -c -f - -C "$rootfs" "$tar_arg" 2>/dev/null | wc -c)
t2=$EPOCHREALTIME
host_find=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
host_tar=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.2f", b - a }')

# --- the busybox initramfs ---------------------------------------------------
# On kvm-pvm hosts the guest runs with noxsave, so its kernel saves only the legacy
# FPU state, yet user space still sees AVX (CPUID and XGETBV run natively there):
# YMM/ZMM registers are clobbered across context switches, and busybox's glibc
# string functions crash in pipelines (seen: find | wc -l segfaults under both
# VMMs). Keep glibc to SSE in the guest, the same for both.
glibc_tunables=""
if [ -e /sys/module/kvm_pvm ]; then
    glibc_tunables="export GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX_Fast_Unaligned_Load,-FMA,-FMA4,-RTM"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/minivm-bench-fs.XXXXXX")
chmod 755 "$work"

# --- the servers alone: bench/fsdrive ------------------------------------------
drive_ok=0
if [ "$drive_rounds" != 0 ]; then
    mkdir -p "$work/scratch"
    drive_args=(--tree "$rootfs${subdir:+/$subdir}" --scratch "$work/scratch" --rounds "$drive_rounds")
    [[ " $vmms " == *" qemu "* ]] || drive_args+=(--minivm-only)
    log "bench/fsdrive: the same jobs to each server, no guest ($drive_rounds rounds)"
    if $sudo "$fsdrive" "${drive_args[@]}" > "$work/fsdrive.out" 2> "$work/fsdrive.err"; then
        drive_ok=1
    else
        log "bench/fsdrive failed:"; tail -5 "$work/fsdrive.err" >&2
    fi
fi
[ "$guest" = 1 ] || vmms=""
ir=$work/initramfs
mkdir -p "$ir"/{bin,dev,proc,sys,mnt,tmp}
cp /bin/busybox "$ir/bin/busybox"
for a in sh mount mkdir cat echo printf dd find tar wc head sync poweroff; do
    ln -s busybox "$ir/bin/$a"
done
cat > "$ir/init" <<INIT
#!/bin/sh
export PATH=/bin
RUNS=$runs
FIND_ARG=$find_arg
TAR_ARG=$tar_arg
$glibc_tunables
INIT
cat >> "$ir/init" <<'INIT'
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Status N to port 0xf4: minivm exits N, QEMU's isa-debug-exit exits 2N+1.
exitvm() {
    printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    poweroff -f
}
now() { read -r up _ < /proc/uptime; }
if ! mount -t virtiofs -o ro bench /mnt; then
    echo "BENCH-FS-ERROR mount -t virtiofs bench /mnt failed"
    exitvm 10
fi
now; echo "BENCH-FS-MOUNTED uptime=$up"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
run=1
while [ "$run" -le "$RUNS" ]; do
    drop
    echo "BENCH-FS-START job=find run=$run"
    now; t0=$up
    out=$(set -o pipefail; find "$FIND_ARG" -xdev 2>/tmp/err | wc -l); rc=$?
    now; t1=$up
    echo "BENCH-FS-RESULT job=find run=$run start=$t0 end=$t1 out=$out rc=$rc"
    head -3 /tmp/err
    drop
    echo "BENCH-FS-START job=tar run=$run"
    now; t0=$up
    out=$(set -o pipefail; tar -c -f - -C /mnt "$TAR_ARG" 2>/tmp/err | wc -c); rc=$?
    now; t1=$up
    echo "BENCH-FS-RESULT job=tar run=$run start=$t0 end=$t1 out=$out rc=$rc"
    head -3 /tmp/err
    run=$((run + 1))
done
echo "BENCH-FS-DONE"
exitvm 0
INIT
chmod 755 "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet) > "$work/initramfs.cpio"

cmdline="console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 cryptomgr.notests rdinit=/init"
# Quiet unless asked: every console line is a slow UART exit on kvm-pvm hosts, but the
# full kernel log, host-time-stamped in target/bench/fs/, shows where a boot spends its time.
[ "$verbose" = 1 ] || cmdline+=" quiet"
# minivm adds its panic port and, on kvm-pvm hosts, these work-arounds itself (vmm/src/config.rs).
qemu_cmdline="$cmdline minivm_panic_port=0xf6"
if [ -e /sys/module/kvm_pvm ]; then
    qemu_cmdline+=" minivm_pvm_quirks noxsave clearcpuid=popcnt,cx16,fsgsbase,smap,pcid,invpcid,rdrand,rdseed,pku,rdtscp,clwb,clflushopt"
fi

# run_vm NAME CMD...: runs the VM under the timeout, stamps each console line with
# the host's clock into $work/NAME.log; stderr into $work/NAME.err; sets vm_rc.
run_vm() {
    local name=$1 line
    shift
    log "$name: booting (a busybox boot takes 1-2 minutes on kvm-pvm hosts; limit ${vm_timeout}s)"
    echo "$EPOCHREALTIME BENCH-FS-HOST-START" > "$work/$name.log"
    # In the background with its pid in a file, so that a signal to this script
    # (handled only between commands, i.e. during `wait`) ends the VM too.
    {
        timeout "$vm_timeout" $sudo "$@" < /dev/null 2> "$work/$name.err" &
        echo $! > "$work/vm.pid"
        # The VMM is timeout's (or sudo's) child. minivm's virtio-fs threads are
        # its file server; every thread but the vCPUs' (minivm's vcpuN, QEMU's
        # "CPU N/KVM") is what the VMM spends besides running the guest.
        (tpid=$(cat "$work/vm.pid"); for _ in $(seq 100); do
             vpid=$(pgrep -P "$tpid" | head -1); [ -n "$vpid" ] && break; sleep 0.05; done
         [ -z "$sudo" ] || vpid=$(pgrep -P "$vpid" | head -1)
         [ -n "$vpid" ] || exit 0
         if [ "$name" = minivm ]; then
             cpu_sampler "$work/minivm.cpu" "$vpid" virtio-fs &
             cpu_sampler "$work/minivm.vmm.cpu" "$vpid" "" vcpu
         else
             cpu_sampler "$work/qemu.vmm.cpu" "$vpid" "" "CPU "
         fi) > /dev/null 2>&1 &
        rc=0
        wait $! || rc=$?
        echo $rc > "$work/$name.rc"
    } | while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'}
        echo "$EPOCHREALTIME $line"
        case "$line" in BENCH-FS-RESULT* | BENCH-FS-ERROR* | BENCH-FS-MOUNTED*) log "$name: $line" ;; esac
    done >> "$work/$name.log" &
    wait $! || true
    rm -f "$work/vm.pid"
    vm_rc=$(cat "$work/$name.rc" 2>/dev/null || echo 255)
    echo "$EPOCHREALTIME BENCH-FS-HOST-END rc=$vm_rc" >> "$work/$name.log"
}

# cpu_sampler OUT PID PREFIX [EXCLUDE]: every 0.5 s until PID is gone, writes to OUT
# the CPU seconds (utime + stime) of the threads of PID and its children whose name
# starts with PREFIX ("" for all) and not with EXCLUDE: the file server's cost
# (minivm's virtio-fs threads; virtiofsd's processes: its namespace sandbox serves
# from a forked child), or a VMM's threads besides its vCPUs. The last half second
# before the process ends is not seen.
cpu_sampler() {
    local out=$1 pid=$2 prefix=$3 exclude=${4:-} hz t st s comm rest f
    hz=$(getconf CLK_TCK)
    while [ -d "/proc/$pid" ]; do
        t=0
        for st in /proc/"$pid"/task/*/stat $(pgrep -P "$pid" | sed 's|.*|/proc/&/task/*/stat|'); do
            s=$(cat "$st" 2>/dev/null) || continue
            comm=${s#*(}; comm=${comm%%)*}
            [[ "$comm" == "$prefix"* ]] || continue
            [ -z "$exclude" ] || [[ "$comm" != "$exclude"* ]] || continue
            rest=${s##*) }
            read -r -a f <<< "$rest"
            t=$((t + f[11] + f[12]))
        done
        awk -v t="$t" -v hz="$hz" 'BEGIN { printf "%.2f\n", t / hz }' > "$out.tmp" && mv "$out.tmp" "$out"
        sleep 0.5
    done
}

# vm_failed NAME WHY: the reason a run gave no result, with the console and stderr tails.
vm_failed() {
    echo "$2"
    echo "  console (last lines):"; grep -v BENCH-FS-HOST "$work/$1.log" | cut -d' ' -f2- | tail -15 | sed 's/^/    /'
    echo "  stderr (last lines):"; tail -15 "$work/$1.err" | sed 's/^/    /'
}

# check_done NAME EXPECTED_RC: did the guest finish all jobs and exit as expected?
check_done() {
    if [ "$vm_rc" = 124 ]; then
        vm_failed "$1" "$1: timed out after ${vm_timeout}s (BENCH_FS_TIMEOUT)"
        return 1
    fi
    if ! grep -q ' BENCH-FS-DONE$' "$work/$1.log"; then
        vm_failed "$1" "$1: the guest did not finish the jobs (exit status $vm_rc)"
        return 1
    fi
    [ "$vm_rc" = "$2" ] || log "$1: warning: exit status $vm_rc, expected $2"
    return 0
}

minivm_ok=0 qemu_ok=0 qemu_why=""
if [[ " $vmms " == *" minivm "* ]]; then
    run_vm minivm "$minivm" run --kernel "$vmlinux" --initrd "$work/initramfs.cpio" --mem "${mem_mib}M" \
        --share "$rootfs:bench:ro" --cmdline "$cmdline" --fs-stats
    if check_done minivm 0 >"$work/minivm.why"; then minivm_ok=1; else cat "$work/minivm.why" >&2; fi
fi

if [[ " $vmms " == *" qemu "* ]]; then
    vfsd=""
    for c in /usr/libexec/virtiofsd /usr/lib/qemu/virtiofsd; do
        [ -x "$c" ] && { vfsd=$c; break; }
    done
    sock=$work/virtiofsd.sock
    if ! command -v qemu-system-x86_64 >/dev/null; then
        qemu_why="qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
    elif [ -z "$vfsd" ]; then
        qemu_why="no virtiofsd: neither /usr/libexec/virtiofsd (package virtiofsd) nor /usr/lib/qemu/virtiofsd (qemu-system-common)"
    else
        # Same policy as minivm's server (devices/src/virtio/fs/passthrough.rs): cache=auto,
        # xattrs on, 5 s entry/attribute timeouts (the C daemon's cache=auto default is 1 s).
        if "$vfsd" --help 2>&1 | grep -q -- '--shared-dir'; then
            vfsd_args=(--socket-path="$sock" --shared-dir="$rootfs" --cache=auto --xattr)
        else
            vfsd_args=(--socket-path="$sock" -o source="$rootfs" -o cache=auto -o timeout=5 -o xattr)
        fi
        if [ -n "${BENCH_FS_VFSD_COUNT:-}" ]; then
            if "$vfsd" --help 2>&1 | grep -q -- '--shared-dir'; then vfsd_args+=(--log-level=debug)
            else vfsd_args+=(-d); fi  # (the C daemon logs each request's opcode only with -d)
        fi
        [ -z "$sudo" ] || vfsd_args+=(--socket-group="$(id -gn)")
        log "qemu: starting $vfsd ${vfsd_args[*]}"
        $sudo "$vfsd" "${vfsd_args[@]}" > "$work/virtiofsd.log" 2>&1 &
        vfsd_pid=$!
        # (With sudo, the daemon is sudo's child.)
        (p=$vfsd_pid; [ -z "$sudo" ] || { sleep 0.5; p=$(pgrep -P "$vfsd_pid" | head -1); }
         cpu_sampler "$work/qemu.cpu" "$p" "") > /dev/null 2>&1 &
        for _ in $(seq 100); do
            [ -S "$sock" ] && break
            kill -0 "$vfsd_pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ ! -S "$sock" ]; then
            qemu_why="$vfsd did not create its socket: $(tail -5 "$work/virtiofsd.log" | tr '\n' ' ')"
        else
            run_vm qemu qemu-system-x86_64 -M microvm,memory-backend=mem -enable-kvm -cpu host,-arch-capabilities \
                -name bench,debug-threads=on \
                -nodefaults -no-user-config -nographic -serial stdio \
                -m "${mem_mib}M" -object "memory-backend-memfd,id=mem,size=${mem_mib}M,share=on" \
                -kernel "$vmlinux" -initrd "$work/initramfs.cpio" -append "$qemu_cmdline" \
                -global virtio-mmio.force-legacy=false \
                -chardev "socket,id=vfs,path=$sock" -device vhost-user-fs-device,chardev=vfs,tag=bench \
                -device isa-debug-exit,iobase=0xf4,iosize=1
            if check_done qemu 1 >"$work/qemu.why"; then
                qemu_ok=1
            else
                qemu_why=$(cat "$work/qemu.why"; echo "  virtiofsd log (last lines):"; tail -10 "$work/virtiofsd.log" | sed 's/^/    /')
            fi
        fi
        $sudo kill "$vfsd_pid" 2>/dev/null || true
        wait "$vfsd_pid" 2>/dev/null || true
        vfsd_pid=""
    fi
    if [ -n "$qemu_why" ]; then log "qemu: $qemu_why"; fi
fi

# --- report ------------------------------------------------------------------
# times NAME JOB: "guest_median host_median out rc_max n" over the runs.
times() {
    awk -v job="$2" '
        $2 == "BENCH-FS-START" { split($3, a, "="); if (a[2] == job) start = $1 }
        $2 == "BENCH-FS-RESULT" {
            split($3, a, "="); if (a[2] != job) next
            delete f
            for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            n++; g[n] = f["end"] - f["start"]; h[n] = $1 - start; out = f["out"] == "" ? "-" : f["out"]
            if (f["rc"] + 0 > rc) rc = f["rc"] + 0
        }
        function median(v, n,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        END { if (n) printf "%.2f %.2f %s %d %d\n", median(g, n), median(h, n), out, rc, n }
    ' "$work/$1.log"
}
# boot NAME: host seconds from VMM start to the share being mounted, and to the VM's end.
boot() {
    awk '$2 == "BENCH-FS-HOST-START" { s = $1 } $2 == "BENCH-FS-MOUNTED" { m = $1 } $2 == "BENCH-FS-HOST-END" { e = $1 }
         END { printf "%.1f %.1f\n", m - s, e - s }' "$work/$1.log"
}

label="find /${find_dir}, tar ${tar_dir}"
# The summary, printed and (bench/summary.py) appended to docs/bench-log.md.
report() {
echo "logs: $logdir/"
echo
if [ "$drive_ok" = 1 ]; then
    echo "file servers alone (bench/fsdrive over $rootfs${subdir:+/$subdir}):"
    cat "$work/fsdrive.out"
    echo
elif [ "$drive_rounds" != 0 ]; then
    echo "bench/fsdrive: FAILED (see $logdir/fsdrive.err)"
    echo
fi
[ "$guest" = 1 ] || exit $(( drive_ok == 1 || drive_rounds == 0 ? 0 : 1 ))
echo "virtio-fs: Debian bookworm minbase, $label; $runs run(s) per boot, median; guest-measured times"
echo "host (page cache warm): find $host_entries entries in ${host_find} s, tar $host_bytes bytes in ${host_tar} s"
declare -A res
for vmm in minivm qemu; do
    ok_var=${vmm}_ok
    [ "${!ok_var}" = 1 ] || continue
    read -r to_mount to_end < <(boot "$vmm")
    echo "$vmm: share mounted ${to_mount} s after start, VM ended after ${to_end} s"
    for job in find tar; do
        read -r g h out rc n < <(times "$vmm" "$job")
        res[$vmm.$job]=$g
        res[$vmm.$job.out]=$out
        res[$vmm.$job.rc]=$rc
        what=entries; [ "$job" = find ] || what=bytes
        note=""; [ "$rc" = 0 ] || note="  (FAILED: exit status $rc; console in $logdir/$vmm.log)"
        printf '  %-5s %9.2f s  (host saw %.2f s)  %s %s%s\n' "$job" "$g" "$h" "$out" "$what" "$note"
    done
    res[$vmm.cpu]=$(cat "$work/$vmm.cpu" 2>/dev/null || echo 0)
    server=virtiofsd; [ "$vmm" = qemu ] || server="minivm's virtio-fs threads"
    echo "  file server CPU for the whole boot and both jobs: ${res[$vmm.cpu]} s ($server)"
    vmm_threads=$(cat "$work/$vmm.vmm.cpu" 2>/dev/null || echo 0)
    if [ "$vmm" = qemu ]; then
        res[$vmm.own]=$(awk -v a="$vmm_threads" -v b="${res[$vmm.cpu]}" 'BEGIN { printf "%.2f", a + b }')
        echo "  VMM CPU besides the vCPUs: ${res[$vmm.own]} s (QEMU's other threads $vmm_threads s + virtiofsd)"
    else
        res[$vmm.own]=$vmm_threads
        echo "  VMM CPU besides the vCPUs: ${res[$vmm.own]} s (every minivm thread but the vCPUs')"
    fi
done
if [ -n "${BENCH_FS_VFSD_COUNT:-}" ] && [ -f "$work/virtiofsd.log" ]; then
    # C virtiofsd: "unique: N, opcode: NAME (n), ..."; the Rust one: "opcode: NAME" too.
    echo "virtiofsd's requests by opcode (from its debug log; its CPU time above includes the logging):"
    echo "    $(grep -cE 'opcode: [A-Z_]+' "$work/virtiofsd.log") FUSE requests"
    grep -oE 'opcode: [A-Z_]+' "$work/virtiofsd.log" | awk '{ print $2 }' | sort | uniq -c | sort -rn |
        awk '{ printf "    %-16s %10d\n", $2, $1 }'
fi
if [ -f "$work/minivm.err" ] && grep -q "FUSE requests" "$work/minivm.err"; then
    echo "minivm's requests by opcode (--fs-stats; virtiofsd's are not counted here):"
    sed -n '/FUSE requests/,$p' "$work/minivm.err" | sed 's/^minivm: /  /; s/^/  /'
fi
status=0
if [ "$minivm_ok" = 1 ] && [ "$qemu_ok" = 1 ]; then
    for job in find tar; do
        if [ "${res[minivm.$job.rc]}" != 0 ] || [ "${res[qemu.$job.rc]}" != 0 ]; then
            echo "ratio minivm/QEMU, $job: n/a (the job failed in a guest)"
            status=1
            continue
        fi
        awk -v job="$job" -v a="${res[minivm.$job]}" -v b="${res[qemu.$job]}" 'BEGIN {
            if (b > 0) printf "ratio minivm/QEMU, %-4s %.3f (goal: <= 1)\n", job, a / b
            else printf "ratio minivm/QEMU, %-4s n/a (QEMU took %.2f s)\n", job, b }'
        [ "${res[minivm.$job.out]}" = "${res[qemu.$job.out]}" ] ||
            echo "warning: $job output differs: minivm ${res[minivm.$job.out]}, QEMU ${res[qemu.$job.out]}"
    done
    awk -v a="${res[minivm.cpu]}" -v b="${res[qemu.cpu]}" 'BEGIN {
        if (b > 0) printf "ratio minivm/virtiofsd, file server CPU: %.3f (goal: <= 0.7)\n", a / b }'
    awk -v a="${res[minivm.own]}" -v b="${res[qemu.own]}" 'BEGIN {
        if (b > 0) printf "ratio minivm/(QEMU + virtiofsd), VMM CPU besides the vCPUs: %.3f\n", a / b }'
    [ "${res[minivm.find.out]}" = "$host_entries" ] ||
        echo "warning: the guest's find saw ${res[minivm.find.out]} entries, the host's $host_entries"
else
    if [[ " $vmms " == *" minivm "* ]] && [ "$minivm_ok" != 1 ]; then
        echo "minivm: NOT MEASURED:"; sed 's/^/  /' "$work/minivm.why"
        status=1
    fi
    if [[ " $vmms " == *" qemu "* ]] && [ "$qemu_ok" != 1 ]; then
        echo "QEMU: NOT MEASURED: $qemu_why"
        [ "$status" = 1 ] || status=4
    fi
fi
exit $status
}
set +e
report | tee "$work/summary.txt"
status=${PIPESTATUS[0]}
set -e
python3 bench/summary.py fs "bench/fs.sh${subdir:+ (BENCH_FS_SUBDIR=$subdir)}" < "$work/summary.txt"
exit "$status"
