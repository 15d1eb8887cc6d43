#!/usr/bin/env bash
# `minivm run IMAGE -- true` (warm cache) against QEMU (-M microvm, KVM) booting the same kernel,
# disk, guest agent and job to the same point (the agent runs `true` and ends the VM through
# port 0xf4), interleaved and repeated. Prints the wall-time medians and their ratio, and
# minivm's own share (its --timings: process start -> guest's first instruction, guest's end ->
# process end). Needs qemu-system-x86, umoci and a built kernel.
#   bench/run.sh            N runs of each (N_RUNS, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
kernel_dir=$(kernel/build.sh)
cargo build --release -q
work=target/bench/run
mkdir -p "$work"
exec python3 - "$kernel_dir" "$work" <<'PY'
import os, re, statistics, subprocess, sys, time
sys.path.insert(0, "bench")
import agentinitrd, busyboximage, summary

kernel_dir, work = sys.argv[1], os.path.abspath(sys.argv[2])
minivm = os.path.abspath("target/x86_64-unknown-linux-gnu/release/minivm")
vmlinux = os.path.join(kernel_dir, "vmlinux")
N = int(os.environ.get("N_RUNS", "3"))
env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"))
# The bench's own cache, but the kernel where kernel/build.sh published it: minivm maps the
# pages of a kernel in its kernel cache (never rewritten) instead of copying them, as it does
# for a user's default kernel.
os.makedirs(os.path.join(work, "cache", "minivm"), exist_ok=True)
kernel_link = os.path.join(work, "cache", "minivm", "kernel")
if not os.path.islink(kernel_link):
    os.symlink(os.path.dirname(os.path.abspath(kernel_dir)), kernel_link)

def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)

# An application image: busybox, Cmd ["true"].
layout = os.path.join(work, "layout")
ref = f"oci:{layout}:app"
if not os.path.exists(os.path.join(layout, "index.json")):
    busyboximage.write(layout, os.path.join(work, "bundle"), ("sh", "true"), cmd="true")

# Warm the cache; the disk QEMU boots is the one minivm runs (QEMU writes a snapshot of it).
key, disk = sh(minivm, "pull", ref, env=env, stdout=subprocess.PIPE, text=True).stdout.split()[:2]

# The command line minivm gives the kernel (quiet, as without -v), from its own log.
log = sh(minivm, "-v", "run", ref, "--kernel", vmlinux, "--", "true", env=env, stdout=subprocess.DEVNULL,
         stderr=subprocess.PIPE, text=True).stderr
cmdline = re.search(r"command line: (.*)", log).group(1).strip()
if " quiet loglevel=1" not in cmdline:
    cmdline += " quiet loglevel=1"

# The same agent and job in an initramfs of the same layout (vmm/src/agent.rs) for QEMU.
job = ("root=blk:/dev/vda\nreadonly=0\nworkdir=\nuser=\nhostname=minivm\n"
       "stdio=ports\nstdin=0\n").encode()
initrd = os.path.join(work, "agent.cpio")
agentinitrd.write(initrd, job, argv=b"true\0", env=agentinitrd.PATH)

qemu = ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-m", "512M",
        "-kernel", vmlinux, "-initrd", initrd, "-append", cmdline,
        "-global", "virtio-mmio.force-legacy=false",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        "-drive", f"id=d,file={disk},format=raw,if=none,snapshot=on",
        "-device", "virtio-blk-device,drive=d",
        "-device", "virtio-rng-device",
        "-device", "virtio-serial-device",
        "-chardev", "null,id=o", "-device", "virtserialport,chardev=o,name=minivm.stdout",
        "-chardev", "null,id=e", "-device", "virtserialport,chardev=e,name=minivm.stderr",
        "-chardev", "null,id=c", "-device", "virtserialport,chardev=c,name=minivm.control"]
mv = [minivm, "run", ref, "--kernel", vmlinux, "--mem", "512M", "--timings", "--", "true"]

def timed(cmd, want_rc):
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, errors="replace")
    dt = time.perf_counter() - t
    if p.returncode != want_rc:
        sys.exit(f"{cmd[0]} exited {p.returncode}: {p.stdout[-800:]} {p.stderr[-800:]}")
    return dt, p.stderr

def phases(err):
    """--timings' phases: {name: ms}."""
    return {m.group(2): float(m.group(1)) for m in re.finditer(r"^\s+([\d.]+) ms  (.+)$", err, re.M)}

walls, entries, ends, owns, qwalls, by_phase = [], [], [], [], [], {}
for i in range(N):
    dt, err = timed(mv, 0)
    m = re.search(r"start to guest entry ([\d.]+) ms, guest ([\d.]+) ms, guest exit to end ([\d.]+) ms", err)
    if not m:
        sys.exit(f"no --timings line: {err[-800:]}")
    entry, guest, end = map(float, m.groups())
    walls.append(dt); entries.append(entry); ends.append(end); owns.append(dt * 1000 - guest)
    for name, ms in phases(err).items():
        by_phase.setdefault(name, []).append(ms)
    qdt, _ = timed(qemu, 1)  # isa-debug-exit: (0 << 1) | 1
    qwalls.append(qdt)
    print(f"  run {i+1}: minivm {dt:.2f} s (own: start->entry {entry:.1f} ms, exit->end {end:.1f} ms), "
          f"QEMU {qdt:.2f} s", flush=True)
med = statistics.median
print(f"run IMAGE -- true, wall: minivm {med(walls):.2f} s, QEMU {med(qwalls):.2f} s, "
      f"ratio minivm/QEMU {med(walls)/med(qwalls):.3f} (median of {N})")
# What starting and reaping any process costs this script (fork, exec, wait, pipes), to tell it
# from minivm's own share of the wall time.
spawn = med([timed(["/bin/true"], 0)[0] * 1000 for _ in range(20)])
print(f"minivm's own share: start->guest entry {med(entries):.1f} ms, guest exit->end {med(ends):.1f} ms, "
      f"wall minus guest time {med(owns):.1f} ms, less a /bin/true spawn ({spawn:.1f} ms) "
      f"{med(owns) - spawn:.1f} ms (median of {N}; goal: under 10 ms)")
print("minivm's own share by phase (median ms; the guest's own time left out):")
for name, v in by_phase.items():
    if name != "guest's end":
        print(f"  {med(v):8.2f}  {name}")
table = summary.Table("run", "bench/run.sh")
table.row("run IMAGE -- true, wall", "s", walls, qwalls)
table.row("minivm: start -> guest entry", "ms", entries, [])
table.row("minivm: guest exit -> end", "ms", ends, [])
table.row("minivm: wall minus guest, less a /bin/true spawn", "ms", [o - spawn for o in owns], [],
          "under 10 ms")
table.done()
PY
