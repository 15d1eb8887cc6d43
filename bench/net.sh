#!/usr/bin/env bash
# virtio-net over a tap, minivm against QEMU (-M microvm, virtio-net-device on
# the same tap, no vhost) in one run, interleaved: a busybox guest receives
# BENCH_NET_MIB MiB from the host over TCP, then sends as much back. For each
# direction: throughput as the host sees it (first byte to EOF) and the CPU
# time the VMM's own threads other than the vCPUs spent per MiB (minivm: the
# event loop that serves the queues; QEMU: its main loop and I/O threads),
# which is what the VMM costs; guest time on a nested host is mostly noise.
#
#   bench/net.sh [--runs N]          (root: it makes a network namespace and a tap)
#
# Knobs: BENCH_NET_MIB (default 2; busybox nc in an emulated guest kernel moves
# tens of KiB/s on kvm-pvm hosts), BENCH_NET_VMMS ("minivm qemu").
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        *) echo "usage: bench/net.sh [--runs N]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/net.sh: needs root (network namespace, tap)" >&2; exit 1; }
scripts/setup-debian.sh
kernel_dir=$(kernel/build.sh)
cargo build --release -q -p vmm
work=$(pwd)/target/bench/net
mkdir -p "$work"
ns=minivm-bench-net
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" sh -e -c '
    ip link set lo up
    ip tuntap add mbench0 mode tap
    ip addr add 10.0.2.1/24 dev mbench0
    ip link set mbench0 up'
ip netns exec "$ns" python3 - "$kernel_dir" "$work" "$runs" <<'PY'
import os, shutil, socket, statistics, subprocess, sys, threading, time

kernel_dir, work, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
minivm = os.path.abspath("target/x86_64-unknown-linux-gnu/release/minivm")
vmlinux = os.path.join(kernel_dir, "vmlinux")
MIB = int(os.environ.get("BENCH_NET_MIB", "2"))
VMMS = os.environ.get("BENCH_NET_VMMS", "minivm qemu").split()
HOST, GUEST, TAP = "10.0.2.1", "10.0.2.15", "mbench0"
TO_GUEST, FROM_GUEST = 5001, 5002
TOTAL = MIB << 20
pvm = os.path.exists("/sys/module/kvm_pvm")

# The guest: busybox initramfs; receive TOTAL bytes, send them back, power off.
init = f"""#!/bin/sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs dev /dev
$B mount -t tmpfs -o size=64m tmpfs /tmp
$B ip link set lo up
$B ip link set eth0 up
$B ip addr add {GUEST}/24 dev eth0
$B ping -c 1 -w 60 {HOST} > /dev/null
$B nc {HOST} {TO_GUEST} < /dev/null > /tmp/f
$B nc {HOST} {FROM_GUEST} < /tmp/f
echo BENCH-NET-DONE
$B sleep 2  # the host samples the VMM's CPU time before it goes
$B poweroff -f
"""
ir = os.path.join(work, "initramfs")
shutil.rmtree(ir, ignore_errors=True)
for d in ("bin", "dev", "proc", "sys", "tmp"):
    os.makedirs(os.path.join(ir, d))
shutil.copy("/bin/busybox", os.path.join(ir, "bin/busybox"))
os.symlink("busybox", os.path.join(ir, "bin/sh"))
with open(os.path.join(ir, "init"), "w") as f:
    f.write(init)
os.chmod(os.path.join(ir, "init"), 0o755)
initrd = os.path.join(work, "initrd.cpio")
with open(initrd, "wb") as out:
    files = subprocess.run(["find", "."], cwd=ir, capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=ir, input=files, stdout=out, check=True)

cmdline = "console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 quiet rdinit=/init"
pvm_args = ""
if pvm:
    # What minivm adds by itself on such hosts; QEMU needs them spelled out.
    pvm_args = (" minivm_pvm_quirks noxsave clearcpuid=popcnt,cx16,fsgsbase,smap,pcid,invpcid,"
                "rdrand,rdseed,pku,rdtscp,clwb,clflushopt GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,"
                "-AVX512F,-AVX512BW,-AVX512VL,-AVX512DQ,-AVX512CD,-FMA,-F16C,-AVX_Fast_Unaligned_Load")

def command(vmm):
    if vmm == "minivm":
        return [minivm, "run", "--kernel", vmlinux, "--initrd", initrd, "--mem", "256M",
                "--cmdline", cmdline, "--no-rng", "--net", f"tap={TAP},mac=52:54:00:12:34:56"]
    return ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-name", "bench,debug-threads=on", "-cpu", "host,-arch-capabilities",
            "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-kernel", vmlinux, "-initrd", initrd, "-append", cmdline + " minivm_panic_port=0xf6" + pvm_args,
            "-global", "virtio-mmio.force-legacy=false",
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
            "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56"]

def vcpu_thread(comm):
    return comm.startswith("vcpu") or "CPU" in comm  # minivm: vcpuN; QEMU: "CPU 0/KVM"

def device_cpu(pid):
    """CPU seconds of the VMM's threads that are not vCPUs, so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if not vcpu_thread(comm):
                total += (int(fields[11]) + int(fields[12])) / tick
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total

def serve(port, send, result, marks):
    """One connection on port: send TOTAL bytes, or read to EOF; records (bytes, seconds)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen(1)
    s.settimeout(3600)
    c, _ = s.accept()
    marks[port] = [time.perf_counter(), None]
    n = 0
    if send:
        chunk = bytes(range(256)) * 256
        while n < TOTAL:
            c.sendall(chunk[: TOTAL - n])
            n += min(len(chunk), TOTAL - n)
        c.shutdown(socket.SHUT_WR)
        c.recv(1)  # the guest's close
    else:
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            n += len(b)
    marks[port][1] = time.perf_counter()
    result[port] = (n, marks[port][1] - marks[port][0])
    c.close(); s.close()

def one_run(vmm):
    result, marks = {}, {}
    threads = [threading.Thread(target=serve, args=(TO_GUEST, True, result, marks)),
               threading.Thread(target=serve, args=(FROM_GUEST, False, result, marks))]
    for t in threads:
        t.start()
    time.sleep(0.2)
    log = open(os.path.join(work, f"{vmm}.console"), "wb")
    p = subprocess.Popen(command(vmm), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    cpu = {}
    # Sample the device threads' CPU time at each phase's start and end.
    while p.poll() is None and len(cpu) < 4:
        for port in (TO_GUEST, FROM_GUEST):
            m = marks.get(port)
            if m and (port, 0) not in cpu:
                cpu[(port, 0)] = device_cpu(p.pid)
            if m and m[1] is not None and (port, 1) not in cpu:
                cpu[(port, 1)] = device_cpu(p.pid)
        time.sleep(0.05)
    try:
        p.wait(timeout=600)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()
    for t in threads:
        t.join(timeout=5)
    log.close()
    out = {}
    for port, name in ((TO_GUEST, "to_guest"), (FROM_GUEST, "from_guest")):
        if port not in result or result[port][0] != TOTAL or (port, 1) not in cpu:
            sys.exit(f"{vmm}: {name} incomplete ({result.get(port)}); see {work}/{vmm}.console")
        n, secs = result[port]
        out[name] = (n / secs / 1024, (cpu[(port, 1)] - cpu[(port, 0)]) / MIB)
    return out

res = {v: [] for v in VMMS}
for i in range(runs):
    for vmm in VMMS:
        r = one_run(vmm)
        res[vmm].append(r)
        print(f"run {i+1} {vmm:6}: host->guest {r['to_guest'][0]:.0f} KiB/s ({r['to_guest'][1]*1000:.0f} ms device CPU/MiB), "
              f"guest->host {r['from_guest'][0]:.0f} KiB/s ({r['from_guest'][1]*1000:.0f} ms device CPU/MiB)", flush=True)

print(f"\nmedians of {runs} run(s), {MIB} MiB each way")
for d in ("to_guest", "from_guest"):
    line = []
    for vmm in VMMS:
        tp = statistics.median(r[d][0] for r in res[vmm])
        cpu = statistics.median(r[d][1] for r in res[vmm])
        line.append((vmm, tp, cpu))
        print(f"  {d:10} {vmm:6}: {tp:8.0f} KiB/s, device threads {cpu*1000:6.0f} ms CPU per MiB")
    if len(line) == 2:
        (_, ta, ca), (_, tb, cb) = line
        print(f"  {d:10} throughput minivm/QEMU {ta/tb:.2f}, device CPU per MiB minivm/QEMU "
              f"{(ca/cb if cb else float('nan')):.2f}")
PY
