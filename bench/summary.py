"""A bench's summary table (medians, spread, ratios) and its entry in docs/bench-log.md.

    t = Table("boot", "bench/boot.sh --tiny-only")
    t.row("start -> tiny guest exit", "ms", minivm_samples, qemu_samples)
    t.done()   # prints the table and appends it, dated, with the machine, to the log

Run as a script (`python3 bench/summary.py NAME TITLE < text`) it appends a summary some
other tool printed (bench/fs.sh's) the same way. BENCH_LOG=0 prints without appending.
"""

import datetime
import os
import platform
import statistics
import subprocess
import sys

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "bench-log.md")


def machine():
    """One line: CPU, cores, memory, host kernel, KVM flavour, QEMU, minivm commit."""
    cpu = "unknown CPU"
    mem = 0
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        with open("/proc/meminfo") as f:
            mem = int(next(l.split()[1] for l in f if l.startswith("MemTotal"))) >> 20
    except (OSError, StopIteration):
        pass
    kvm = "kvm-pvm (nested)" if os.path.exists("/sys/module/kvm_pvm") else "kvm"
    qemu = run(["qemu-system-x86_64", "--version"]).split("\n")[0].replace("QEMU emulator version ", "")
    commit = run(["git", "rev-parse", "--short", "HEAD"]).strip()
    dirty = " (uncommitted changes)" if run(["git", "status", "--porcelain", "--untracked-files=no"]).strip() else ""
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem} GiB; Linux {platform.release()}, {kvm}; "
            f"QEMU {qemu or 'absent'}; minivm {commit or '?'}{dirty}")


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def fmt(x):
    return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.1f}"


def spread(xs):
    return f"{fmt(min(xs))}-{fmt(max(xs))}" if len(xs) > 1 else "-"


class Table:
    """Rows of minivm's samples against the peer's (QEMU's), as medians [spread] and a ratio."""

    def __init__(self, name, title, peer="QEMU"):
        self.name, self.title, self.peer = name, title, peer
        self.lines = [f"| | minivm | {peer} | ratio | runs |", "|---|---|---|---|---|"]

    def row(self, what, unit, mine, theirs, goal=""):
        m = statistics.median(mine)
        cells = [f"{fmt(m)} {unit} [{spread(mine)}]"]
        if theirs:
            t = statistics.median(theirs)
            cells += [f"{fmt(t)} {unit} [{spread(theirs)}]", f"{m / t:.3f}" if t else "-"]
        else:
            cells += ["-", "-"]
        goal = f" (goal: {goal})" if goal else ""
        self.lines.append(f"| {what}{goal} | " + " | ".join(cells) + f" | {len(mine)} |")

    def note(self, text):
        """A line under the table."""
        self.lines.append(f"\n{text}")

    def done(self):
        text = "\n".join(self.lines)
        print(f"\n{self.title}: medians [min-max], minivm/{self.peer}\n{text}", flush=True)
        append(self.name, self.title, text)


def append(name, title, text):
    """Adds a dated entry for bench `name` before the log's closing "## Open" section."""
    if os.environ.get("BENCH_LOG", "1") == "0":
        return
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    entry = f"## {when}: `{title}` (written by the bench)\n\n{machine()}\n\n{text.strip()}\n\n"
    with open(LOG) as f:
        log = f.read()
    i = log.find("\n## Open\n")
    log = log + "\n" + entry if i < 0 else log[:i + 1] + entry + log[i + 1:]
    tmp = LOG + ".tmp"
    with open(tmp, "w") as f:
        f.write(log)
    os.replace(tmp, LOG)
    print(f"(appended to docs/bench-log.md)", file=sys.stderr)


if __name__ == "__main__":
    name, title = sys.argv[1], sys.argv[2]
    body = sys.stdin.read()
    append(name, title, "```\n" + body.strip() + "\n```")
