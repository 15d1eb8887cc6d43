#!/usr/bin/env bash
# Snapshot/restore against a cold boot, in one run, on a busybox OCI image
# (default kernel, virtio-rng, 256 MiB) saved with minivm's guest agent
# waiting for its command (`run IMAGE --snapshot-to DIR`):
#  (a) `run IMAGE -- true` (cold boot, warm image cache): process start ->
#      exit, against `restore DIR -- true`, interleaved, median of N
#      (default 20; cold boots are capped at N_COLD, default 3, as each
#      takes ~30 s on a nested host);
#  (b) minivm's own share of a restore: --timings' "start to guest entry";
#  (c) memory: 20 VMs restored side by side, each running `sleep 3`: the
#      sum of their PSS (each page counted once across them) against the
#      RSS of one VM.
# QEMU (-M microvm, KVM) is saved and restored the same way, interleaved:
# the same kernel, command line, disk (snapshot=on), agent and job (an
# initramfs of the agent waiting for its job, ports of the same names; an
# isa-debugcon on port 0xf5 tells the script the agent is ready, then QMP
# `migrate exec:cat > FILE`; a restore is `-incoming "exec:cat FILE"` with
# the job waiting in the control port's pipe, and ends through
# isa-debug-exit on 0xf4).
#   bench/snapshot.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
kernel_dir=$(kernel/build.sh)
cargo build --release -q
work=target/bench/snapshot
rm -rf "$work"
mkdir -p "$work"
exec python3 - "$kernel_dir" "$(realpath "$work")" "${1:-20}" <<'PY'
import json, os, re, socket, statistics, subprocess, sys, time
sys.path.insert(0, "bench")
import agentinitrd, busyboximage

kernel_dir, work, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
N_COLD = int(os.environ.get("N_COLD", "3"))
minivm = os.path.abspath("target/x86_64-unknown-linux-gnu/release/minivm")
vmlinux = os.path.join(kernel_dir, "vmlinux")
env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"))

def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

# A busybox image (umoci, as bench/run.sh).
layout = os.path.join(work, "layout")
ref = f"oci:{layout}:app"
busyboximage.write(layout, os.path.join(work, "bundle"), ("sh", "true", "sleep"))

def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[1]} failed ({p.returncode}): {p.stderr.decode()[-600:]}")
    return dt, p.stderr.decode()

vm = ["--kernel", vmlinux, "--mem", "256M"]
snap = os.path.join(work, "snap")
dt, err = timed([minivm, "-v", "run", ref] + vm + ["--snapshot-to", snap])
print(f"snapshot: convert, boot and save {dt:.1f} s", flush=True)
cmdline = re.search(r"command line: (.*)", err).group(1).strip()
if " quiet loglevel=1" not in cmdline:
    cmdline += " quiet loglevel=1"
disk = subprocess.run([minivm, "pull", ref], env=env, check=True, stdout=subprocess.PIPE,
                      text=True).stdout.split()[1]

# QEMU: the same agent waiting for its job, in an initramfs of the same layout.
initrd = os.path.join(work, "agent.cpio")
agentinitrd.write(initrd, b"root=blk:/dev/vda\nreadonly=0\nhostname=minivm\nstdio=ports\nstdin=1\nwait=1\n")

def job_message(argv):
    a = b"".join(x.encode() + b"\0" for x in argv)
    e = agentinitrd.PATH
    t = f"workdir=\nuser=\nstdio=ports\nstdin=0\nclock={time.time():.9f}\n".encode()
    return f"job {len(a)} {len(e)} {len(t)}\n".encode() + a + e + t

def qemu(n, control, extra):
    return ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "null", "-m", "256M",
            "-kernel", vmlinux, "-initrd", initrd, "-append", cmdline,
            "-global", "virtio-mmio.force-legacy=false",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
            "-chardev", f"file,id=r,path={work}/ready{n}", "-device", "isa-debugcon,iobase=0xf5,chardev=r",
            "-drive", f"id=d,file={disk},format=raw,if=none,snapshot=on",
            "-device", "virtio-blk-device,drive=d", "-device", "virtio-rng-device",
            "-device", "virtio-serial-device",
            "-chardev", "null,id=o", "-device", "virtserialport,chardev=o,name=minivm.stdout",
            "-chardev", "null,id=e", "-device", "virtserialport,chardev=e,name=minivm.stderr",
            "-chardev", "null,id=i", "-device", "virtserialport,chardev=i,name=minivm.stdin",
            "-chardev", control, "-device", "virtserialport,chardev=c,name=minivm.control"] + extra

def control_pipe(name):
    """FIFOs for a `pipe` chardev, held open here (a closed end would be EOF)."""
    ctl = os.path.join(work, name)
    for e in ("in", "out"):
        if not os.path.exists(f"{ctl}.{e}"):
            os.mkfifo(f"{ctl}.{e}")
    return ctl, [os.open(f"{ctl}.in", os.O_RDWR), os.open(f"{ctl}.out", os.O_RDWR)]

qstate = os.path.join(work, "qemu.state")
t = time.perf_counter()
# The control port's backend is a pipe when saved too: its connection state is migrated.
ctl, save_fds = control_pipe("ctl-save")
q = subprocess.Popen(qemu("", f"pipe,id=c,path={ctl}", ["-qmp", f"unix:{work}/qmp,server=on,wait=off"]))
while not (os.path.exists(f"{work}/ready") and os.path.getsize(f"{work}/ready") > 0):
    if q.poll() is not None:
        sys.exit(f"QEMU ended with {q.returncode} before its agent was ready")
    time.sleep(0.1)
s = socket.socket(socket.AF_UNIX)
s.connect(f"{work}/qmp")
qmp = s.makefile("rw")
def call(c, **a):
    qmp.write(json.dumps({"execute": c, "arguments": a}) + "\n")
    qmp.flush()
    while True:
        r = json.loads(qmp.readline())
        if "return" in r or "error" in r:
            return r
qmp.readline()
call("qmp_capabilities")
# Live: the guest waits for its job; a stopped source would stay paused when restored.
call("migrate", uri=f"exec:cat > {qstate}")
while (st := call("query-migrate")["return"].get("status")) not in ("completed", "failed"):
    time.sleep(0.05)
call("quit")
q.wait()
for fd in save_fds:
    os.close(fd)
if st != "completed":
    sys.exit("QEMU could not save its VM")
print(f"QEMU snapshot: boot and save {time.perf_counter() - t:.1f} s ({os.path.getsize(qstate) >> 20} MiB)",
      flush=True)

def qemu_restore(n, argv):
    """Starts a QEMU restore whose agent finds `argv` waiting; returns the process."""
    ctl, fds = control_pipe(f"ctl{n}")
    os.write(fds[0], job_message(argv))
    p = subprocess.Popen(qemu(n, f"pipe,id=c,path={ctl}", ["-incoming", f"exec:cat {qstate}"]),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p.fds = fds
    return p

def qemu_done(p):
    err = p.communicate()[1]
    for fd in p.fds:
        os.close(fd)
    if p.returncode != 1:  # isa-debug-exit: (0 << 1) | 1
        sys.exit(f"QEMU restore exited {p.returncode}: {err.decode()[-600:]}")

cold, restore, entry, qrestore = [], [], [], []
for i in range(N):
    if i < N_COLD:
        cold.append(timed([minivm, "run", ref] + vm + ["--", "true"])[0])
    dt, err = timed([minivm, "restore", "--timings", snap, "--", "true"])
    restore.append(dt)
    t = time.perf_counter()
    qemu_done(qemu_restore(i, ["true"]))
    qrestore.append(time.perf_counter() - t)
    for line in err.splitlines():
        if "start to guest entry" in line:
            entry.append(float(line.split("start to guest entry ")[1].split(" ms")[0]))
mc, mr = statistics.median(cold), statistics.median(restore)
print(f"(a) start -> `true` exited: cold boot {mc:.2f} s (median of {len(cold)}), restore {mr * 1000:.1f} ms "
      f"(median of {N}), ratio restore/cold {mr / mc:.4f}")
mq = statistics.median(qrestore)
print(f"(a) QEMU -incoming of the same VM, start -> `true` exited: {mq * 1000:.1f} ms (median of {N}); "
      f"ratio minivm/QEMU {mr / mq:.3f}")
print(f"(b) restore, minivm's own share (start -> guest entry): median {statistics.median(entry):.2f} ms, "
      f"min {min(entry):.2f} ms, max {max(entry):.2f} ms")

def rollup(pid):
    vals = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if len(p) >= 2 and p[1].isdigit():
                vals[p[0].rstrip(":")] = int(p[1])
    return vals

procs = [subprocess.Popen([minivm, "restore", snap, "--", "sleep", "3"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(20)]
time.sleep(1.5)
rolls = [rollup(p.pid) for p in procs]
codes = [p.wait() for p in procs]
one = rolls[0]["Rss"]
pss = sum(r["Pss"] for r in rolls)
print(f"(c) 20 restored VMs side by side: PSS sum {pss / 1024:.1f} MiB, one VM's RSS {one / 1024:.1f} MiB, "
      f"ratio {pss / one:.2f} (goal < 2); exit statuses {'all 0' if set(codes) == {0} else codes}")
qprocs = [qemu_restore(100 + n, ["sleep", "3"]) for n in range(20)]
time.sleep(1.5)
qrolls = [rollup(p.pid) for p in qprocs]
for p in qprocs:
    qemu_done(p)
qone = qrolls[0]["Rss"]
qpss = sum(r["Pss"] for r in qrolls)
print(f"(c) QEMU, 20 restored side by side: PSS sum {qpss / 1024:.1f} MiB, one's RSS {qone / 1024:.1f} MiB, "
      f"ratio {qpss / qone:.2f}; minivm/QEMU PSS sum {pss / qpss:.3f}")
PY
