"""A VMM process's own memory beside its guest's, from /proc/PID/smaps: resident memory
less what its guest RAM mappings hold (so guest pages the guest touched do not count), and
of that the private dirty part (what each more VM costs: the rest is the binary's and the
libraries' file pages, shared by every VM on the host)."""


def own_kib(pid, guest_bytes, guest_files=()):
    """(own resident KiB, own private dirty KiB, guest-RAM resident KiB) of process `pid`, whose
    guest has `guest_bytes` of RAM. Guest RAM is every run of adjacent mappings, anonymous or
    of one of `guest_files` (minivm maps a cached kernel's pages over guest memory, which
    splits its one mapping into several), that spans at least `guest_bytes` (QEMU's mapping
    may be larger, rounded)."""
    maps = []  # [lo, hi, path, rss, private dirty]
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            first = fields[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(x, 16) for x in first.split("-"))
                maps.append([lo, hi, fields[5] if len(fields) > 5 else "", 0, 0])
            elif first == "Rss:":
                maps[-1][3] = int(fields[1])
            elif first == "Private_Dirty:":
                maps[-1][4] = int(fields[1])
    runs, run = [], []
    for m in maps:
        part = m[2] == "" or m[2] in guest_files
        if part and run and run[-1][1] == m[0]:
            run.append(m)
            continue
        runs.append(run)
        run = [m] if part else []
    runs.append(run)
    guest_maps = {id(m) for r in runs if r and r[-1][1] - r[0][0] >= guest_bytes for m in r}
    own = sum(m[3] for m in maps if id(m) not in guest_maps)
    private = sum(m[4] for m in maps if id(m) not in guest_maps)
    guest = sum(m[3] for m in maps if id(m) in guest_maps)
    return own, private, guest
