#!/usr/bin/env bash
# Snapshot/restore against a cold boot, in one run, on a busybox initramfs
# guest (default kernel, virtio-rng, 256 MiB) whose init writes the
# boot-finished port (the snapshot point) and then leaves through the exit
# port:
#  (a) cold boot: process start -> exit, and restore: process start -> exit,
#      interleaved, median of N (default 20; cold boots are capped at
#      N_COLD, default 3, as each takes ~30 s on a nested host);
#  (b) minivm's own share of a restore: --timings' "start to guest entry";
#  (c) memory: 20 VMs restored side by side from a snapshot whose guest
#      sleeps 3 s after the point: the sum of their PSS (each page counted
#      once across them) against the RSS of one VM.
# QEMU's savevm/-incoming is not compared yet.
#   bench/snapshot.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
kernel_dir=$(kernel/build.sh)
cargo build --release -q
work=target/bench/snapshot
rm -rf "$work"
mkdir -p "$work"
exec python3 - "$kernel_dir" "$work" "${1:-20}" <<'PY'
import os, statistics, subprocess, sys, time

kernel_dir, work, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
N_COLD = int(os.environ.get("N_COLD", "3"))
minivm = os.path.abspath("target/release/minivm")
vmlinux = os.path.join(kernel_dir, "vmlinux")

def initramfs(name, after):
    root = os.path.join(work, name + ".root")
    for d in ("bin", "dev", "proc"):
        os.makedirs(os.path.join(root, d))
    subprocess.run(["cp", "/bin/busybox", os.path.join(root, "bin/busybox")], check=True)
    for app in ("sh", "mount", "sleep", "dd", "printf", "echo"):
        os.symlink("busybox", os.path.join(root, "bin", app))
    with open(os.path.join(root, "init"), "w") as f:
        f.write("#!/bin/sh\nmount -t devtmpfs dev /dev\necho BENCH-POINT\n"
                "printf '\\001' | dd of=/dev/port bs=1 seek=245 count=1 2>/dev/null\n"
                f"{after}\nprintf '\\000' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null\n")
    os.chmod(os.path.join(root, "init"), 0o755)
    out = os.path.join(work, name + ".cpio")
    subprocess.run(f"cd {root} && find . | cpio -o -H newc --quiet > {os.path.abspath(out)}",
                   shell=True, check=True)
    return out

def args(initrd):
    return ["--kernel", vmlinux, "--initrd", initrd, "--mem", "256M", "--append", "quiet rdinit=/init"]

def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[1]} failed ({p.returncode}): {p.stderr.decode()[-600:]}")
    return dt, p.stderr.decode()

quick = initramfs("quick", "")
hold = initramfs("hold", "sleep 3")
snaps = {}
for name, initrd in (("quick", quick), ("hold", hold)):
    snaps[name] = os.path.join(work, name + ".snap")
    dt, _ = timed([minivm, "run"] + args(initrd) + ["--snapshot-to", snaps[name]])
    print(f"snapshot {name}: boot and save {dt:.1f} s", flush=True)

cold, restore, entry = [], [], []
for i in range(N):
    if i < N_COLD:
        cold.append(timed([minivm, "run"] + args(quick))[0])
    dt, err = timed([minivm, "restore", "--timings", snaps["quick"]])
    restore.append(dt)
    for line in err.splitlines():
        if "start to guest entry" in line:
            entry.append(float(line.split("start to guest entry ")[1].split(" ms")[0]))
mc, mr = statistics.median(cold), statistics.median(restore)
print(f"(a) start -> exit: cold boot {mc:.2f} s (median of {len(cold)}), restore {mr * 1000:.1f} ms "
      f"(median of {N}), ratio restore/cold {mr / mc:.4f}")
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

procs = [subprocess.Popen([minivm, "restore", snaps["hold"]], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(20)]
time.sleep(1.5)
rolls = [rollup(p.pid) for p in procs]
codes = [p.wait() for p in procs]
one = rolls[0]["Rss"]
pss = sum(r["Pss"] for r in rolls)
print(f"(c) 20 restored VMs side by side: PSS sum {pss / 1024:.1f} MiB, one VM's RSS {one / 1024:.1f} MiB, "
      f"ratio {pss / one:.2f} (goal < 2); exit statuses {'all 0' if set(codes) == {0} else codes}")
PY
