"""A VMM process's own memory beside its guest's: resident memory (smaps) less what its
guest RAM mappings hold, so guest pages the guest touched do not count."""


def own_kib(pid, guest_bytes):
    """(own KiB, guest-RAM KiB) of process `pid`, whose guest has `guest_bytes` of RAM:
    every mapping at least that large (after rounding, QEMU's may be larger) counts as
    guest RAM."""
    own = guest = 0
    size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(x, 16) for x in first.split("-"))
                size = hi - lo
            elif first == "Rss:":
                kib = int(line.split()[1])
                if size >= guest_bytes:
                    guest += kib
                else:
                    own += kib
    return own, guest
