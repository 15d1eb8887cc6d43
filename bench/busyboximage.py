"""The benches' busybox OCI image, made with umoci: /bin/busybox and links
for `apps`, tagged `app` in the layout `layout` (rebuilt from scratch;
`bundle` is umoci's scratch tree), Cmd `cmd` if given."""
import os
import subprocess


def write(layout, bundle, apps, cmd=None):
    def sh(*c):
        subprocess.run(c, check=True, stdout=subprocess.DEVNULL)
    sh("rm", "-rf", layout, bundle)
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:app")
    sh("umoci", "unpack", "--rootless", "--image", f"{layout}:app", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"), exist_ok=True)
    sh("cp", "/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for app in apps:
        os.symlink("busybox", os.path.join(rootfs, "bin", app))
    sh("umoci", "repack", "--image", f"{layout}:app", bundle)
    if cmd:
        sh("umoci", "config", "--image", f"{layout}:app", "--config.cmd", cmd)
