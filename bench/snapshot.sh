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
exec python3 - "$kernel_dir" "$(realpath "$work")" "${1:-20}" <<'PY'
import os, statistics, subprocess, sys, time

kernel_dir, work, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
N_COLD = int(os.environ.get("N_COLD", "3"))
minivm = os.path.abspath("target/release/minivm")
vmlinux = os.path.join(kernel_dir, "vmlinux")
env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"))

def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

# A busybox image (umoci, as bench/run.sh).
layout = os.path.join(work, "layout")
ref = f"oci:{layout}:app"
bundle = os.path.join(work, "bundle")
sh("umoci", "init", "--layout", layout)
sh("umoci", "new", "--image", f"{layout}:app")
sh("umoci", "unpack", "--rootless", "--image", f"{layout}:app", bundle)
rootfs = os.path.join(bundle, "rootfs")
os.makedirs(os.path.join(rootfs, "bin"), exist_ok=True)
sh("cp", "/bin/busybox", os.path.join(rootfs, "bin/busybox"))
for app in ("sh", "true", "sleep"):
    os.symlink("busybox", os.path.join(rootfs, "bin", app))
sh("umoci", "repack", "--image", f"{layout}:app", bundle)

def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[1]} failed ({p.returncode}): {p.stderr.decode()[-600:]}")
    return dt, p.stderr.decode()

vm = ["--kernel", vmlinux, "--mem", "256M"]
snap = os.path.join(work, "snap")
dt, _ = timed([minivm, "run", ref] + vm + ["--snapshot-to", snap])
print(f"snapshot: convert, boot and save {dt:.1f} s", flush=True)

cold, restore, entry = [], [], []
for i in range(N):
    if i < N_COLD:
        cold.append(timed([minivm, "run", ref] + vm + ["--", "true"])[0])
    dt, err = timed([minivm, "restore", "--timings", snap, "--", "true"])
    restore.append(dt)
    for line in err.splitlines():
        if "start to guest entry" in line:
            entry.append(float(line.split("start to guest entry ")[1].split(" ms")[0]))
mc, mr = statistics.median(cold), statistics.median(restore)
print(f"(a) start -> `true` exited: cold boot {mc:.2f} s (median of {len(cold)}), restore {mr * 1000:.1f} ms "
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

procs = [subprocess.Popen([minivm, "restore", snap, "--", "sleep", "3"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(20)]
time.sleep(1.5)
rolls = [rollup(p.pid) for p in procs]
codes = [p.wait() for p in procs]
one = rolls[0]["Rss"]
pss = sum(r["Pss"] for r in rolls)
print(f"(c) 20 restored VMs side by side: PSS sum {pss / 1024:.1f} MiB, one VM's RSS {one / 1024:.1f} MiB, "
      f"ratio {pss / one:.2f} (goal < 2); exit statuses {'all 0' if set(codes) == {0} else codes}")
PY
