#!/usr/bin/env bash
# Boot benchmarks, minivm against QEMU (-M microvm, KVM) in one run:
#  (a) VMM overhead: process start -> tiny guest's exit (a few instructions that
#      print a line and leave through an exit port), median of N_TINY (20);
#  (b) process start -> busybox init's marker on the console, same kernel
#      (vmlinux) and disk for both, median of N_LINUX (3);
#  and each VMM's own memory beside its guest's (resident memory less guest RAM's)
#  for a spinning tiny guest (median of 5) and at the busybox guest's marker.
# Prints the medians and minivm/QEMU ratios. Needs qemu-system-x86 and a built kernel.
#   bench/boot.sh [--tiny-only]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
kernel_dir=$(kernel/build.sh)
cargo build --release -q
# A freshly built binary's pages stay dirty in the page cache until written
# back, and would count as private dirty memory.
sync
work=target/bench
mkdir -p "$work"
exec python3 - "$kernel_dir" "$work" "${1:-}" <<'PY'
import os, statistics, subprocess, sys, time, select
sys.path.insert(0, "bench")
import procmem
import summary
import tinyguest

kernel_dir, work, mode = sys.argv[1], sys.argv[2], sys.argv[3]
minivm = os.path.abspath("target/x86_64-unknown-linux-gnu/release/minivm")
pvm = os.path.exists("/sys/module/kvm_pvm")
N_TINY = int(os.environ.get("N_TINY", "20"))
N_LINUX = int(os.environ.get("N_LINUX", "3"))

def run_to_exit(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if b"tiny guest says hi" not in p.stdout:
        sys.exit(f"unexpected output from {cmd[0]}: rc={p.returncode} {p.stdout[-500:]!r} {p.stderr[-500:]!r}")
    return dt

def run_to_marker(cmd, marker=b"BENCH-INIT-MARKER", timeout=1200):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    try:
        while time.perf_counter() - t < timeout:
            r, _, _ = select.select([p.stdout], [], [], 1.0)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                if marker in buf:
                    return time.perf_counter() - t
        sys.exit(f"no marker from {cmd[0]} (rc={p.poll()}): {buf[-800:]!r}")
    finally:
        p.kill()
        p.wait()

table = summary.Table("boot", "bench/boot.sh" + (" --tiny-only" if mode == "--tiny-only" else ""))

def report(name, a, b, n, unit="ms", goal=""):
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name}: minivm {ma*1000:.1f} ms, QEMU {mb*1000:.1f} ms, ratio minivm/QEMU {ma/mb:.3f} (median of {n})", flush=True)
    scale = 1000 if unit == "ms" else 1
    table.row(name, unit, [x * scale for x in a], [x * scale for x in b], goal)

qemu_base = ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
             "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"]

def own_memory(cmd, guest_bytes, marker, timeout=1200, guest_files=()):
    """Starts `cmd`, waits for `marker` on its stdout, then reads its own memory (KiB)
    beside the guest RAM it holds, and kills it."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf, t = b"", time.perf_counter()
    try:
        while marker not in buf:
            if time.perf_counter() - t > timeout:
                sys.exit(f"no marker from {cmd[0]}: {buf[-800:]!r}")
            r, _, _ = select.select([p.stdout], [], [], 1.0)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    sys.exit(f"{cmd[0]} ended before its marker: {buf[-800:]!r}")
                buf += chunk
        time.sleep(0.2)
        return procmem.own_kib(p.pid, guest_bytes, guest_files)
    finally:
        p.kill()
        p.wait()

def report_memory(name, a, b):
    med = lambda runs, i: statistics.median(x[i] for x in runs) / 1024
    print(f"{name}: own resident memory minivm {med(a, 0):.2f} MiB, QEMU {med(b, 0):.2f} MiB, "
          f"ratio {med(a, 0)/med(b, 0):.3f}; private dirty {med(a, 1):.2f} / {med(b, 1):.2f} MiB, "
          f"ratio {med(a, 1)/med(b, 1):.3f} (guest RAM resident: {med(a, 2):.1f} / {med(b, 2):.1f} MiB; "
          f"median of {len(a)})", flush=True)
    col = lambda runs, i: [x[i] / 1024 for x in runs]
    table.row(f"{name}, resident", "MiB", col(a, 0), col(b, 0), "under 5 MiB")
    table.row(f"{name}, private dirty", "MiB", col(a, 1), col(b, 1))

guest = os.path.join(work, "tiny-guest.elf")
tinyguest.write(guest)
qemu_tiny = qemu_base + ["-m", "16M", "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel"]
a, b = [], []
for _ in range(N_TINY):  # interleaved
    a.append(run_to_exit([minivm, "run", "--kernel", guest, "--mem", "16M"]))
    b.append(run_to_exit(qemu_tiny + [guest]))
report("(a) VMM overhead, start -> tiny guest exit", a, b, N_TINY, goal="under 3 ms, below 0.1x QEMU")
spinning = os.path.join(work, "tiny-guest-spin.elf")
tinyguest.write(spinning, spin=True)
a, b = [], []
for _ in range(5):
    a.append(own_memory([minivm, "run", "--kernel", spinning, "--mem", "16M"], 16 << 20, b"says hi"))
    b.append(own_memory(qemu_tiny + [spinning], 16 << 20, b"says hi"))
report_memory("(a) memory beside a tiny guest", a, b)
if mode == "--tiny-only":
    table.done()
    sys.exit(0)

disk = os.path.join(work, "busybox.raw")
if not os.path.exists(disk):
    root = os.path.join(work, "busybox.root")
    subprocess.run(["rm", "-rf", root], check=True)
    for d in ("bin", "dev", "proc", "sys"):
        os.makedirs(os.path.join(root, d))
    subprocess.run(["cp", "/bin/busybox", os.path.join(root, "bin/busybox")], check=True)
    for app in ("sh", "echo", "mount", "sleep"):
        os.symlink("busybox", os.path.join(root, "bin", app))
    with open(os.path.join(root, "init"), "w") as f:
        f.write("#!/bin/sh\necho BENCH-INIT-MARKER\nexec sleep 1000\n")
    os.chmod(os.path.join(root, "init"), 0o755)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", root, disk + ".tmp", "32M"],
                   check=True, stdout=subprocess.DEVNULL)
    os.rename(disk + ".tmp", disk)

vmlinux = os.path.join(kernel_dir, "vmlinux")
cmdline = "console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 quiet root=/dev/vda rw init=/init"
qemu_cmdline = cmdline + " minivm_panic_port=0xf6"
if pvm:
    qemu_cmdline += (" minivm_pvm_quirks noxsave clearcpuid=popcnt,cx16,fsgsbase,smap,pcid,invpcid,"
                     "rdrand,rdseed,pku,rdtscp,clwb,clflushopt")
minivm_linux = [minivm, "run", "--kernel", vmlinux, "--image", disk, "--readonly", "--mem", "512M",
                "--cmdline", cmdline]
qemu_linux = qemu_base + ["-m", "512M", "-kernel", vmlinux, "-append", qemu_cmdline,
                          "-global", "virtio-mmio.force-legacy=false",
                          "-drive", f"id=d,file={disk},format=raw,if=none,readonly=on",
                          "-device", "virtio-blk-device,drive=d"]
a, b = [], []
for i in range(N_LINUX):
    a.append(run_to_marker(minivm_linux))
    b.append(run_to_marker(qemu_linux))
    print(f"  run {i+1}: minivm {a[-1]:.1f} s, QEMU {b[-1]:.1f} s", flush=True)
report("(b) start -> busybox init marker", a, b, N_LINUX, unit="s")
# Memory: one more boot of each, read at the marker (the guest's kernel is up).
# minivm maps the cached kernel's pages over guest memory: they are guest RAM too.
mem_a = [own_memory(minivm_linux, 512 << 20, b"BENCH-INIT-MARKER", guest_files=(os.path.realpath(vmlinux),))]
mem_b = [own_memory(qemu_linux, 512 << 20, b"BENCH-INIT-MARKER")]
report_memory("(b) memory beside a busybox Linux guest", mem_a, mem_b)
table.done()
PY
