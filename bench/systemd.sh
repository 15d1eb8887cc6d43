#!/usr/bin/env bash
# The big fat VM's boot, minivm against QEMU in one run, interleaved:
# process start to systemd's "Reached target multi-user.target" and to the
# login prompt on the serial console, over virtio-blk and over virtio-fs, for
# the Debian image of scripts/make-debian-image.sh, same kernel, command line,
# disk or tree, vCPUs and memory; then SIGTERM (minivm) / QMP system_powerdown
# (QEMU) to process exit: a clean ACPI shutdown. Prints each run, medians,
# ratios minivm/QEMU and the virtio-fs/virtio-blk ratio, failed units seen on
# the console, the ten slowest units (from the console's systemd lines), and
# minivm's FUSE requests by opcode in its virtio-fs boot (--fs-stats).
#
#   bench/systemd.sh [--runs N] [--only blk|fs] [--no-qemu]
#
# QEMU: -M microvm,acpi=on with KVM; over virtio-fs with virtiofsd (cache=auto,
# xattrs) on a private copy of the image's tree. Needs root (debootstrap,
# virtiofsd). On the nested kvm-pvm hosts a virtio-blk boot takes 5-10 min and
# a virtio-fs boot much longer: --runs 1 (the default) with both VMMs and both
# roots is about an hour; use --only and --no-qemu to shorten it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1 only="blk fs" qemu=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --no-qemu) qemu=0; shift ;;
        *) echo "usage: bench/systemd.sh [--runs N] [--only blk|fs] [--no-qemu]" >&2; exit 2 ;;
    esac
done
scripts/setup-debian.sh
kernel_dir=$(kernel/build.sh)
cargo build --release -q
mapfile -t image < <(scripts/make-debian-image.sh --rootfs)
work=$(pwd)/target/bench/systemd
mkdir -p "$work"
exec python3 - "$kernel_dir" "$work" "${image[0]}" "${image[1]}" "$runs" "$only" "$qemu" <<'PY'
import json, os, pty, re, select, shutil, signal, socket, statistics, subprocess, sys, time

kernel_dir, work, oci, rootfs, runs, only, with_qemu = sys.argv[1:]
runs, only, with_qemu = int(runs), only.split(), with_qemu == "1"
minivm = os.path.abspath("target/x86_64-unknown-linux-gnu/release/minivm")
vmlinux = os.path.join(kernel_dir, "vmlinux")
ref = f"oci:{oci}:latest"
MULTI_USER = b"Reached target multi-user.target"
LOGIN = b"login:"
TIMEOUT = 3 * 3600
CPUS, MEM = "2", "1G"

def minivm_cmdline():
    """minivm's own command line for this image (its -v log), minus the
    virtio-mmio device list, which QEMU writes for its own devices."""
    p = subprocess.Popen([minivm, "-v", "run", "--oci", ref, "--mem", "64M"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = ""
    for line in p.stderr:
        if "command line:" in line:
            break
    p.kill(); p.wait()
    words = line.split("command line:", 1)[1].split()
    return " ".join(w for w in words if not w.startswith("virtio_mmio.device="))

def run(name, cmd, stop, log_path, env=None):
    """Runs cmd on a pty; returns times from start to multi-user, to login,
    and from the stop request to exit, plus the console text."""
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env)
    os.close(slave)
    buf, t_mu, t_login, t_stop, t_exit = b"", None, None, None, None
    with open(log_path, "wb") as log:
        while True:
            now = time.perf_counter() - t0
            if now > TIMEOUT and t_stop is None:
                print(f"  {name}: no login after {TIMEOUT} s; stopping", flush=True)
                t_stop = now; stop(p)
            r, _, _ = select.select([master], [], [], 1.0)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                log.write(chunk); log.flush(); buf += chunk  # tail -f works
                if t_mu is None and MULTI_USER in buf:
                    t_mu = time.perf_counter() - t0
                if t_login is None and LOGIN in buf[-4096:]:
                    t_login = time.perf_counter() - t0
            if t_stop is None and (t_login is not None or (t_mu is not None and now - t_mu > 180)):
                time.sleep(2)
                t_stop = time.perf_counter() - t0
                stop(p)
            if t_stop is not None and p.poll() is not None:
                break
    p.wait()
    t_exit = time.perf_counter() - t0
    os.close(master)
    return {"multi_user": t_mu, "login": t_login, "shutdown": t_exit - t_stop if t_stop else None,
            "rc": p.returncode, "console": buf.decode("utf-8", "replace")}

def sigterm(p):
    p.send_signal(signal.SIGTERM)

def qmp_powerdown(sock_path):
    def stop(p):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        f = s.makefile("rw")
        f.readline()
        for c in ({"execute": "qmp_capabilities"}, {"execute": "system_powerdown"}):
            f.write(json.dumps(c) + "\n"); f.flush(); f.readline()
        s.close()
    return stop

def qemu_base(cmdline, extra_m=""):
    return ["qemu-system-x86_64", "-M", "microvm,acpi=on" + extra_m, "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-smp", CPUS, "-m", MEM, "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-kernel", vmlinux, "-append", cmdline,
            "-global", "virtio-mmio.force-legacy=false", "-device", "virtio-rng-device"]

def virtiofsd():
    for c in ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"):
        if os.access(c, os.X_OK):
            return c
    sys.exit("no virtiofsd (package virtiofsd or qemu-system-common)")

base_cmdline = minivm_cmdline()
print(f"image {ref}\nkernel command line: {base_cmdline}", flush=True)
disk = os.path.join(work, "debian.raw")
if "blk" in only and with_qemu:
    subprocess.run([minivm, "convert", ref, "-o", disk], check=True, stdout=subprocess.DEVNULL)

def runs_for(root, i):
    out = {}
    log = lambda v: os.path.join(work, f"{v}-{root}-{i}.console")
    if root == "blk":
        mv = [minivm, "run", "--oci", ref, "--cpus", CPUS, "--mem", MEM]
    else:
        mv = [minivm, "run", "--oci", ref, "--virtiofs", "--fs-stats", "--cpus", CPUS, "--mem", MEM]
    out["minivm"] = run("minivm", mv, sigterm, log("minivm"))
    if not with_qemu:
        return out
    qmp = os.path.join(work, "qmp.sock")
    if os.path.exists(qmp):
        os.unlink(qmp)
    if root == "blk":
        overlay = os.path.join(work, "qemu-disk.raw")
        subprocess.run(["cp", "--reflink=auto", "--sparse=always", disk, overlay], check=True)
        q = qemu_base(base_cmdline.replace("root=/dev/vda", "root=/dev/vda")) + [
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-drive", f"id=d,file={overlay},format=raw,if=none", "-device", "virtio-blk-device,drive=d"]
        out["qemu"] = run("qemu", q, qmp_powerdown(qmp), log("qemu"))
        os.unlink(overlay)
    else:
        tree = os.path.join(work, "qemu-tree")
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["cp", "-a", rootfs, tree], check=True)
        sock = os.path.join(work, "virtiofsd.sock")
        d = virtiofsd()
        args = ([f"--socket-path={sock}", f"--shared-dir={tree}", "--cache=auto", "--xattr"]
                if "--shared-dir" in subprocess.run([d, "--help"], capture_output=True, text=True).stdout
                + subprocess.run([d, "--help"], capture_output=True, text=True).stderr
                else [f"--socket-path={sock}", "-o", f"source={tree}", "-o", "cache=auto", "-o", "xattr"])
        vfsd = subprocess.Popen([d] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        # minivm's tag for the root share is minivm-root; the same command line works.
        q = qemu_base(base_cmdline, ",memory-backend=mem") + [
            "-object", f"memory-backend-memfd,id=mem,size={MEM},share=on",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-chardev", f"socket,id=vfs,path={sock}", "-device", "vhost-user-fs-device,chardev=vfs,tag=minivm-root"]
        out["qemu"] = run("qemu", q, qmp_powerdown(qmp), log("qemu"))
        vfsd.kill(); vfsd.wait()
        shutil.rmtree(tree, ignore_errors=True)
    return out

def failed_units(console):
    return sorted(set(re.findall(r"Failed to start (\S+)", console)) |
                  set(re.findall(r"Dependency failed for (.+?)\.\r?\n", console)) |
                  set(re.findall(r"Timed out waiting for device (\S+)", console)))

def slowest(console, n=10):
    # "[  12.345] systemd[1]: Starting foo.service - ..." / "Started foo.service - ..."
    starts, spans = {}, []
    for t, verb, unit in re.findall(r"\[\s*([\d.]+)\] systemd\[1\]: (Starting|Started|Finished) (\S+)", console):
        if verb == "Starting":
            starts[unit] = float(t)
        elif unit in starts:
            spans.append((float(t) - starts.pop(unit), unit))
    return sorted(spans, reverse=True)[:n]

fmt = lambda v: "-" if v is None else f"{v:.0f} s"
results = {r: {"minivm": [], "qemu": []} for r in only}
for i in range(runs):
    for root in only:
        out = runs_for(root, i)
        for vmm, o in out.items():
            results[root][vmm].append(o)
            print(f"run {i+1} {root:3} {vmm:6}: multi-user {fmt(o['multi_user'])}, login {fmt(o['login'])}, "
                  f"shutdown {fmt(o['shutdown'])}, exit {o['rc']}, failed: {', '.join(failed_units(o['console'])) or 'none'}",
                  flush=True)

def med(lst, key):
    v = [o[key] for o in lst if o[key] is not None]
    return statistics.median(v) if v else None

print("\nmedians (process start -> event; shutdown: stop request -> process exit)")
for root in only:
    for key in ("multi_user", "login", "shutdown"):
        a, b = med(results[root]["minivm"], key), med(results[root]["qemu"], key)
        ratio = f", ratio minivm/QEMU {a/b:.2f}" if a and b else ""
        print(f"  {root:3} {key:10}: minivm {fmt(a)}, QEMU {fmt(b)}{ratio}")
if "blk" in only and "fs" in only:
    for vmm in ("minivm", "qemu"):
        a, b = med(results["fs"][vmm], "multi_user"), med(results["blk"][vmm], "multi_user")
        if a and b:
            print(f"  {vmm}: virtio-fs / virtio-blk time to multi-user: {a/b:.2f}")
for root in only:
    o = results[root]["minivm"][-1]
    print(f"\nslowest units, minivm over {root} (guest seconds from Starting to Started/Finished):")
    for d, unit in slowest(o["console"]):
        print(f"  {d:7.1f} s  {unit}")
if "fs" in only:
    console = results["fs"]["minivm"][-1]["console"]
    i = console.find("minivm: virtio-fs ")
    if i >= 0:
        print("\nminivm's FUSE requests in the last virtio-fs boot (--fs-stats):")
        print(console[i:].replace("\r", "").rstrip())
print(f"\nconsoles in {work}")
PY
