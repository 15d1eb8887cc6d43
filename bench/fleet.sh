#!/usr/bin/env bash
# Many VMs at once: starts N tiny-guest VMs together (64 MiB each), each
# printing a line and leaving through the exit port with its own status,
# then the same fleet under QEMU (-M microvm, KVM), RUNS times interleaved.
# Prints per VMM: whether every exit status and console line was right,
# total wall time, VMs per second, and the per-VM memory overhead: the
# private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup;
# the binary's and libc's shared pages count once for the whole fleet) of a
# spinning tiny guest's VMM less the guest pages it touched, and its RSS.
# (wait4's ru_maxrss is no use here: it counts the forking parent's pages.)
# minivm's own peak RSS in the fleet comes from its -v usage line.
#   bench/fleet.sh [N] [RUNS]        (defaults 200, 1; BENCH_FLEET_QEMU=0 skips QEMU)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cargo build --release -q
work=target/bench/fleet
mkdir -p "$work"
exec python3 - "$work" "${1:-200}" "${2:-1}" <<'PY'
import os, re, statistics, subprocess, sys, time
sys.path.insert(0, "bench")
import tinyguest

work, N, RUNS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
MEM_MIB = 64
minivm = os.path.abspath("target/x86_64-unknown-linux-gnu/release/minivm")
with_qemu = os.environ.get("BENCH_FLEET_QEMU", "1") != "0"
qemu_base = ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
             "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-m", f"{MEM_MIB}M",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]

def status_of(i):
    return (i * 7 + 1) % 256

def kernel(i):
    p = os.path.join(work, f"guest-{status_of(i)}.elf")
    if not os.path.exists(p):
        tinyguest.write(p, message=f"vm {status_of(i)} up\n".encode(), status=status_of(i))
    return p

def command(vmm, k):
    if vmm == "minivm":
        return [minivm, "-v", "run", "--kernel", k, "--mem", f"{MEM_MIB}M", "--no-rng"]
    return qemu_base + ["-kernel", k]

def expected(vmm, s):
    # isa-debug-exit makes QEMU exit with (value << 1) | 1.
    return s if vmm == "minivm" else ((s << 1) | 1) & 0xFF

def fleet(vmm):
    """Starts N at once; returns (all right, wall s, [peak KiB from -v], first wrong)."""
    procs = []
    t0 = time.perf_counter()
    for i in range(N):
        out = open(os.path.join(work, f"{vmm}-{i}.out"), "wb+")
        err = open(os.path.join(work, f"{vmm}-{i}.err"), "wb+")
        p = subprocess.Popen(command(vmm, kernel(i)), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        procs.append((i, p, (out, err)))
    by_pid = {p.pid: (i, p, f) for i, p, f in procs}
    rss, wrong = [], None
    while by_pid:
        pid, status = os.waitpid(-1, 0)
        if pid not in by_pid:
            continue
        i, p, (out, err) = by_pid.pop(pid)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, log = out.read(), err.read().decode(errors="replace")
        out.close()
        err.close()
        m = re.search(r"boot 1 ended .*\(peak (\d+) KiB\)", log)
        if m:
            rss.append(int(m.group(1)))
        want = expected(vmm, status_of(i))
        if wrong is None and (p.returncode != want or f"vm {status_of(i)} up".encode() not in text):
            wrong = f"VM {i}: status {p.returncode} (want {want}), output {text[-300:]!r}"
    wall = time.perf_counter() - t0
    return wrong is None, wall, rss, wrong

def steady_memory(vmm):
    """(RSS, private, guest pages touched) KiB of a spinning tiny guest's VMM."""
    k = os.path.join(work, "spin.elf")
    tinyguest.write(k, message=b"spinning\n", spin=True)
    cmd = command(vmm, k)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        os.read(p.stdout.fileno(), 64)  # the guest ran
        time.sleep(0.2)
        size = MEM_MIB * 1024
        guest = 0
        with open(f"/proc/{p.pid}/smaps") as f:
            cur = None
            for line in f:
                parts = line.split()
                if parts[0] == "Size:":
                    cur = int(parts[1])
                elif parts[0] == "Rss:" and cur is not None and cur >= size:
                    guest = max(guest, int(parts[1]))
        roll = {}
        with open(f"/proc/{p.pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    roll[parts[0].rstrip(":")] = int(parts[1])
        return roll["Rss"], roll["Private_Clean"] + roll["Private_Dirty"], guest
    finally:
        p.kill()
        p.wait()

vmms = ["minivm"] + (["qemu"] if with_qemu else [])
steady = {v: steady_memory(v) for v in vmms}
results = {v: [] for v in vmms}
for r in range(RUNS):
    for v in vmms:
        results[v].append(fleet(v))
summary = {}
for v in vmms:
    ok = all(x[0] for x in results[v])
    wall = statistics.median(x[1] for x in results[v])
    rss, private, guest = steady[v]
    over = (private - guest) / 1024
    summary[v] = (wall, over)
    peaks = [k for x in results[v] for k in x[2]]
    peak = f"; peak RSS in the fleet {statistics.median(peaks) / 1024:.1f} MiB (median)" if peaks else ""
    print(f"{v}: {N} VMs at once, every status and line right: {'yes' if ok else 'NO'}; "
          f"wall {wall:.2f} s, {N / wall:.1f} VMs/s (median of {RUNS}); per VM: {over:.1f} MiB private "
          f"memory beyond {guest} KiB of guest pages, RSS {rss / 1024:.1f} MiB with shared pages{peak}",
          flush=True)
    for x in results[v]:
        if x[3]:
            print(f"  {v}: {x[3]}")
if with_qemu:
    (wm, om), (wq, oq) = summary["minivm"], summary["qemu"]
    print(f"ratio minivm/QEMU: wall {wm / wq:.3f}, per-VM overhead {om / oq:.3f}")
if not all(x[0] for v in vmms for x in results[v]):
    sys.exit(1)
PY
