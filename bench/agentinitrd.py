"""minivm's guest agent and a job in a newc initramfs of the layout
vmm/src/agent.rs writes, for QEMU to boot the same agent and job as minivm."""
import glob
import os

PATH = b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\0"


def newc(entries):
    out = bytearray()
    for ino, (name, mode, rdev, data) in enumerate(entries + [("TRAILER!!!", 0, (0, 0), b"")], 1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        out += b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
        out += bytes(-len(out) % 4) + data
        out += bytes(-len(out) % 4)
    return bytes(out)


def write(path, job, argv=b"", env=b""):
    """The release build's agent with the job files (`job` text, NUL-ended argv and env)."""
    agent = max(glob.glob("target/x86_64-unknown-linux-gnu/release/build/vmm-*/out/minivm-agent"), key=os.path.getmtime)
    with open(path, "wb") as f:
        f.write(newc([("dev", 0o40755, (0, 0), b""), ("dev/console", 0o20600, (5, 1), b""),
                      ("minivm", 0o40755, (0, 0), b""), ("minivm/argv", 0o100644, (0, 0), argv),
                      ("minivm/env", 0o100644, (0, 0), env), ("minivm/job", 0o100644, (0, 0), job),
                      ("init", 0o100755, (0, 0), open(agent, "rb").read())]))
