#!/usr/bin/env bash
# containerd with minivm's shim against runc, in one run, on a private
# containerd (its own root, state and socket under target/bench/containerd):
#  (a) `ctr run --rm IMAGE ID true`, process start -> exit, interleaved
#      (runc, minivm, runc, ...), median of N (default 3; each minivm run
#      boots Linux, which takes a minute or more on a nested host);
#  (b) where the time goes, from containerd's own events (`ctr events`):
#      ctr's start -> /tasks/start (containerd's create and the runtime's
#      start: for the shim, everything before minivm runs) and /tasks/exit ->
#      ctr's end (the runtime's exit report, delete and teardown).
# The image is busybox made with umoci (as bench/run.sh) and imported from
# an OCI archive; minivm boots its default kernel.
#   bench/containerd.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
kernel/build.sh >/dev/null
cargo build --release -q
work=target/bench/containerd
rm -rf "$work"
mkdir -p "$work"
exec python3 - "$(realpath "$work")" "${1:-3}" <<'PY'
import datetime, os, statistics, subprocess, sys, time
sys.path.insert(0, "bench")
import busyboximage

work, N = sys.argv[1], int(sys.argv[2])
shim = os.path.abspath("target/x86_64-unknown-linux-gnu/release/containerd-shim-minivm-v2")
sock = os.path.join(work, "containerd.sock")

def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

layout = os.path.join(work, "layout")
busyboximage.write(layout, os.path.join(work, "bundle"), ("sh", "true"))
archive = os.path.join(work, "image.tar")
sh("tar", "-C", layout, "-cf", archive, ".")

with open(os.path.join(work, "config.toml"), "w") as f:
    f.write(f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
            f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{sock}"\n')
log = open(os.path.join(work, "containerd.log"), "w")
ctd = subprocess.Popen(["containerd", "--config", os.path.join(work, "config.toml")],
                       stdout=log, stderr=log)
ctr = ["ctr", "--address", sock]
for _ in range(300):
    if subprocess.run(ctr + ["version"], capture_output=True).returncode == 0:
        break
    time.sleep(0.2)
sh(*ctr, "image", "import", "--base-name", "docker.io/library/bench", archive)
image = "docker.io/library/bench:app"
events = subprocess.Popen(ctr + ["events"], stdout=subprocess.PIPE, text=True)

def event_time(line):
    # "2026-12-06 21:40:00.123456789 +0000 UTC default /tasks/start {...}"
    day, clock = line.split()[:2]
    secs, _, frac = clock.partition(".")
    t = datetime.datetime.fromisoformat(f"{day} {secs}+00:00").timestamp()
    return t + float("0." + (frac or "0"))

def run(name, runtime):
    cmd = ctr + ["run", "--rm"] + (["--runtime", runtime] if runtime else []) + [image, name, "true"]
    t0 = time.time()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    t1 = time.time()
    if p.returncode != 0:
        sys.exit(f"{name}: ctr failed ({p.returncode}): {p.stderr.decode()[-600:]}")
    seen = {}
    while "/tasks/delete" not in seen:
        line = events.stdout.readline()
        if f'"container_id":"{name}"' in line.replace(" ", ""):
            topic = next(w for w in line.split() if w.startswith("/"))
            seen[topic] = event_time(line)
    return t1 - t0, seen["/tasks/start"] - t0, t1 - seen["/tasks/exit"]

res = {"runc": [], "minivm": []}
try:
    for i in range(N):
        for name, runtime in (("runc", None), ("minivm", shim)):
            r = run(f"{name}{i}", runtime)
            res[name].append(r)
            print(f"{name} {i}: {r[0]*1000:.1f} ms (start {r[1]*1000:.1f} ms, exit {r[2]*1000:.1f} ms)",
                  flush=True)
finally:
    events.kill()
    ctd.terminate()
    ctd.wait()

def med(name, k):
    return statistics.median(x[k] for x in res[name]) * 1000
print(f"\n| median of {N} | runc | minivm shim | ratio |")
print("|---|---|---|---|")
for k, what in ((0, "`ctr run --rm IMAGE true`, start -> exit"),
                (1, "ctr start -> /tasks/start (before the process or VM runs)"),
                (2, "/tasks/exit -> ctr end")):
    a, b = med("runc", k), med("minivm", k)
    print(f"| {what} | {a:.1f} ms | {b:.1f} ms | {b/a:.2f} |")
PY
