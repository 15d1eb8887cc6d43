"""A VMM process's own memory beside its guest's, from /proc/PID/smaps: resident memory
less what its guest RAM mappings hold (so guest pages the guest touched do not count), and
of that the private dirty part (what each more VM costs: the rest is the binary's and the
libraries' file pages, shared by every VM on the host)."""


def own_kib(pid, guest_bytes):
    """(own resident KiB, own private dirty KiB, guest-RAM resident KiB) of process `pid`, whose
    guest has `guest_bytes` of RAM: every mapping at least that large (QEMU's may be
    larger, rounded) counts as guest RAM."""
    own = private = guest = 0
    size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(x, 16) for x in first.split("-"))
                size = hi - lo
                continue
            kib = int(line.split()[1]) if first in ("Rss:", "Private_Dirty:") else 0
            if size >= guest_bytes:
                guest += kib if first == "Rss:" else 0
            elif first == "Rss:":
                own += kib
            elif first == "Private_Dirty:":
                private += kib
    return own, private, guest
