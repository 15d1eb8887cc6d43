#!/usr/bin/env python3
"""Line up two host-time-stamped consoles (bench/fs.sh's target/bench/fs/*.log, taken
with BENCH_FS_VERBOSE=1) message by message and print where the first one falls
behind or catches up: each line shows both host times since VMM start, the lead of
the first over the second in host and guest (printk) time, and the message.

    bench/boot-phases.py target/bench/fs/minivm.log target/bench/fs/qemu.log [STEP]

STEP (seconds, default 0.3): print a message only when the host-time gap moved by
more than this since the last printed one.
"""
import re
import sys

PRINTK = re.compile(r"\s*\[\s*([\d.]+)\]\s*(.*)")


def load(path):
    """[(host seconds since the first line, guest seconds or None, message key)]"""
    lines = []
    start = None
    with open(path, errors="replace") as f:
        for raw in f:
            stamp, _, msg = raw.rstrip("\n").partition(" ")
            try:
                t = float(stamp)
            except ValueError:
                sys.exit(f"{path}: not a host-time-stamped console (line {raw[:60]!r})")
            start = t if start is None else start
            m = PRINTK.match(msg)
            guest = float(m.group(1)) if m else None
            text = m.group(2) if m else msg
            # Numbers differ between runs and VMMs (addresses, sizes, times): not part of the key.
            key = re.sub(r"0x[0-9a-fA-F]+|\d+", "N", text)[:60]
            lines.append((t - start, guest, key))
    return lines


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    try:
        step = float(sys.argv[3]) if len(sys.argv) == 4 else 0.3
    except ValueError:
        sys.exit(f"STEP must be a number of seconds, not {sys.argv[3]!r}")
    a, b = load(sys.argv[1]), load(sys.argv[2])
    first = {}
    for line in b:
        first.setdefault(line[2], line)
    print(f"{'host A':>8} {'host B':>8} {'A-B host':>9} {'A-B guest':>9}  message")
    last = None
    for ta, ga, key in a:
        if key not in first:
            continue
        tb, gb, _ = first[key]
        lead = ta - tb
        if last is None or abs(lead - last) > step:
            g = f"{ga - gb:9.2f}" if ga is not None and gb is not None else f"{'-':>9}"
            print(f"{ta:8.2f} {tb:8.2f} {lead:9.2f} {g}  {key}")
            last = lead


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
    except OSError as e:
        sys.exit(f"bench/boot-phases.py: {e}")
