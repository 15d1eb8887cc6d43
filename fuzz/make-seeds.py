#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/TARGET/.

The formats are documented on the entry points (devices::fuzzing,
imagefs::fuzzing). Seeds are well-formed examples of what a driver or an
image really sends, so the fuzzer starts from deep inside the parsers.
Run from anywhere; existing seed files of the same name are overwritten,
inputs the fuzzer added are kept.
"""
import io
import json
import os
import struct
import tarfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- virtio-mmio + virtio-blk -------------------------------------------------
def op(kind, off, val, size=4):
    log = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return struct.pack("<BHI", kind | log << 2, off, val & 0xFFFFFFFF)


def rd(reg, size=4):
    return op(0, reg, 0, size)


def wr(reg, val, size=4):
    return op(1, reg, val, size)


def mem32(addr, val):
    assert addr % 4 == 0
    return op(2, addr // 4, val)


def mem_bytes(addr, data):
    data = data + b"\0" * (-len(data) % 4)
    return b"".join(mem32(addr + i, struct.unpack_from("<I", data, i)[0]) for i in range(0, len(data), 4))


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


NEXT, WRITE, INDIRECT = 1, 2, 4


def driver_setup(qsize=256):
    s = rd(0x0) + rd(0x4) + rd(0x8) + rd(0xC)
    s += wr(0x70, 1) + wr(0x70, 3)  # ACKNOWLEDGE, DRIVER
    s += wr(0x14, 0) + rd(0x10) + wr(0x14, 1) + rd(0x10)
    s += wr(0x24, 0) + wr(0x20, 0) + wr(0x24, 1) + wr(0x20, 1)  # VERSION_1
    s += wr(0x70, 11) + rd(0x70)  # FEATURES_OK
    s += wr(0x30, 0) + rd(0x34) + wr(0x38, qsize)
    s += wr(0x80, 0) + wr(0x84, 0) + wr(0x90, 0x4000) + wr(0x94, 0) + wr(0xA0, 0x5000) + wr(0xA4, 0)
    s += wr(0x44, 1) + wr(0x70, 15)  # QUEUE_READY, DRIVER_OK
    s += rd(0x100, 8) + rd(0x100, 4) + rd(0x108, 2) + rd(0xFC)
    return s


def blk_request(rtype, sector, data_len, data_flags, idx=0):
    """Header at 0x8000, data at 0x9000, status at 0xA000; avail entry idx."""
    s = mem_bytes(0x8000, struct.pack("<IIQ", rtype, 0, sector))
    descs = [desc(0x8000, 16, NEXT, 1)]
    if data_len:
        descs.append(desc(0x9000, data_len, data_flags | NEXT, 2))
    descs.append(desc(0xA000, 1, WRITE, 0))
    s += mem_bytes(0, b"".join(descs))
    s += mem32(0x4000 + 4 + 2 * (idx & ~1), 0)
    s += mem32(0x4000, (idx + 1) << 16)  # flags 0, idx
    return s


seed = driver_setup()
put("virtio_mmio_blk", "read", seed + blk_request(0, 0, 512, WRITE) + wr(0x50, 0) + rd(0x60) + wr(0x64, 1))
put("virtio_mmio_blk", "write", seed + mem_bytes(0x9000, b"x" * 512) + blk_request(1, 2, 512, 0) + op(3, 0, 0))
put("virtio_mmio_blk", "flush-getid", seed + blk_request(4, 0, 0, 0) + wr(0x50, 0) + blk_request(8, 0, 20, WRITE, 1) + wr(0x50, 0))
put("virtio_mmio_blk", "past-end", seed + blk_request(0, 127, 1024, WRITE) + wr(0x50, 0))
put("virtio_mmio_blk", "reset", seed + wr(0x70, 0) + rd(0x70) + driver_setup(16) + wr(0x50, 0))


# --- blk chains ---------------------------------------------------------------
def chains(descs, heads, buf):
    s = struct.pack("<B", len(descs))
    for a, l, f, n in descs:
        s += struct.pack("<HHHH", a, l, f, n)
    s += struct.pack("<B", len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    return s + buf


hdr_in = struct.pack("<IIQ", 0, 0, 1)
hdr_out = struct.pack("<IIQ", 1, 0, 3)
buf = hdr_in + b"\0" * (0x100 - 16) + hdr_out
put("blk_chains", "in", chains([(0, 16, NEXT, 1), (0x1000, 512, WRITE | NEXT, 2), (0x2000, 1, WRITE, 0)], [0], buf))
put("blk_chains", "out", chains([(0x100, 16, NEXT, 1), (0x1000, 1024, NEXT, 2), (0x2000, 1, WRITE, 0)], [0], buf))
put("blk_chains", "two", chains([(0, 16, NEXT, 1), (0x1000, 512, WRITE | NEXT, 2), (0x2000, 1, WRITE, 0),
                                 (0x100, 16, NEXT, 4), (0x1000, 512, NEXT, 5), (0x2001, 1, WRITE, 0)], [0, 3], buf))
put("blk_chains", "loop", chains([(0, 16, NEXT, 1), (0x1000, 512, WRITE | NEXT, 0)], [0], buf))
# An indirect table at buffer offset 0x3000 (guest 0xB000) holding the chain.
table = desc(0x8000, 16, NEXT, 1) + desc(0x9000, 512, WRITE | NEXT, 2) + desc(0xA000, 1, WRITE, 0)
ibuf = hdr_in + b"\0" * (0x3000 - 16) + table
put("blk_chains", "indirect", chains([(0x3000, 48, INDIRECT, 0)], [0], ibuf))

# --- FUSE ---------------------------------------------------------------------
ROOTN = 0x81  # raw node id 1: the root


def rec(opcode, node, body=b"", shape=0):
    return struct.pack("<HBBB", len(body), opcode, node, shape) + body


def z(s):
    return s.encode() + b"\0"


LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR = 1, 2, 3, 4, 5, 6, 8, 9, 10, 11
RENAME, LINK, OPEN, READ, WRITE_, STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR = 12, 13, 14, 15, 16, 17, 18, 20, 21, 22
LISTXATTR, REMOVEXATTR, FLUSH, OPENDIR, READDIR, RELEASEDIR, ACCESS, CREATE, IOCTL = 23, 24, 25, 27, 28, 29, 34, 35, 39
BATCH_FORGET, FALLOCATE, READDIRPLUS, RENAME2, LSEEK, COPY_FILE_RANGE, SYNCFS = 42, 43, 44, 45, 46, 47, 50


def read_in(fh, off, size):
    return struct.pack("<QQIIQII", fh, off, size, 0, 0, 0, 0)


# Node numbers: the share's inodes in lookup order are 2, 3, ... (1 is its root).
fuse = {
    "read": rec(LOOKUP, ROOTN, z("a")) + rec(GETATTR, 2, struct.pack("<IIQ", 0, 0, 0))
    + rec(OPEN, 2, struct.pack("<II", 2, 0)) + rec(READ, 2, read_in(0, 0, 4096))
    + rec(READ, 2, read_in(1, 0, 4096), 1) + rec(FLUSH, 2, struct.pack("<QIIQ", 0, 0, 0, 0))
    + rec(RELEASE, 2, struct.pack("<QIIQ", 0, 0, 0, 0)) + rec(FORGET, 2, struct.pack("<Q", 1)),
    "write": rec(CREATE, ROOTN, struct.pack("<IIII", 0o102, 0o644, 0o22, 0) + z("new"))
    + rec(WRITE_, 2, struct.pack("<QQIIQII", 0, 0, 6, 0, 0, 0, 0) + b"hello\n", 2)
    + rec(WRITE_, 2, struct.pack("<QQIIQII", 1, 1 << 30, 6, 0, 0, 0, 0) + b"hello\n")
    + rec(FALLOCATE, 2, struct.pack("<QQQII", 1, 0, 1 << 21, 0, 0))
    + rec(FSYNC, 2, struct.pack("<QII", 1, 0, 0))
    + rec(SETATTR, 2, struct.pack("<IIQQQQQQIIIIIIII", 1 | 8, 0, 0, 0o755, 0, 0, 0, 0, 0, 0, 0, 0o755, 0, 0, 0, 0))
    + rec(SETATTR, 2, struct.pack("<IIQQQQQQIIIIIIII", 8, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    "dirs": rec(MKDIR, ROOTN, struct.pack("<II", 0o755, 0o22) + z("m"))
    + rec(OPENDIR, ROOTN, struct.pack("<II", 0, 0)) + rec(READDIRPLUS, ROOTN, read_in(0, 0, 4096))
    + rec(READDIR, ROOTN, read_in(1, 0, 4096), 1) + rec(RELEASEDIR, ROOTN, struct.pack("<QIIQ", 0, 0, 0, 0))
    + rec(RMDIR, ROOTN, z("m")) + rec(LOOKUP, ROOTN, z("d")) + rec(LOOKUP, 2, z("b"))
    + rec(LOOKUP, 2, z("..")) + rec(LOOKUP, ROOTN, z("..")) + rec(LOOKUP, ROOTN, z("d/b")),
    "links": rec(LOOKUP, ROOTN, z("up")) + rec(READLINK, 2) + rec(LOOKUP, ROOTN, z("abs"))
    + rec(OPEN, 3, struct.pack("<II", 0, 0)) + rec(SYMLINK, ROOTN, z("s") + z("../outside/y"))
    + rec(LOOKUP, ROOTN, z("a")) + rec(LINK, ROOTN, struct.pack("<Q", (1 << 56) | 5) + z("hard"))
    + rec(RENAME, ROOTN, struct.pack("<Q", 1) + z("hard") + z("moved"))
    + rec(RENAME2, ROOTN, struct.pack("<QII", 1, 2, 0) + z("moved") + z("a"))
    + rec(UNLINK, ROOTN, z("moved")) + rec(MKNOD, ROOTN, struct.pack("<IIII", 0o20644, 0, 0, 0) + z("wh"))
    + rec(MKNOD, ROOTN, struct.pack("<IIII", 0o60644, 0x0801, 0, 0) + z("sda"))
    + rec(MKNOD, ROOTN, struct.pack("<IIII", 0o10644, 0, 0, 0) + z("fifo")),
    "xattr": rec(LOOKUP, ROOTN, z("a")) + rec(SETXATTR, 2, struct.pack("<II", 3, 0) + z("user.k") + b"val")
    + rec(GETXATTR, 2, struct.pack("<II", 64, 0) + z("user.k")) + rec(GETXATTR, 2, struct.pack("<II", 0xFFFFFFFF, 0) + z("user.k"))
    + rec(LISTXATTR, 2, struct.pack("<II", 4096, 0)) + rec(REMOVEXATTR, 2, z("user.k"))
    + rec(SETXATTR, 2, struct.pack("<II", 4, 0) + z("trusted.overlay.opaque") + b"y"),
    "misc": rec(STATFS, ROOTN) + rec(ACCESS, ROOTN, struct.pack("<II", 7, 0)) + rec(SYNCFS, ROOTN, struct.pack("<Q", 0))
    + rec(LOOKUP, ROOTN, z("a")) + rec(OPEN, 2, struct.pack("<II", 0, 0))
    + rec(LSEEK, 2, struct.pack("<QQII", 0, 0, 3, 0)) + rec(IOCTL, 2, struct.pack("<QIIQII", 0, 0, 0x5401, 0, 0, 0))
    + rec(COPY_FILE_RANGE, 2, struct.pack("<QQQQQQQ", 0, 0, (1 << 56) | 2, 0, 10, 4, 0))
    + rec(BATCH_FORGET, 0, struct.pack("<IIQQ", 1, 0, (1 << 56) | 2, 1)) + rec(38, 0),
}
for name, data in fuse.items():
    put("fuse_passthrough", name, data)
    put("fuse_layered", name, data)
put("fuse_layered", "whiteout", rec(LOOKUP, ROOTN, z("d")) + rec(LOOKUP, 2, z("b")) + rec(LOOKUP, 2, z(".wh.b"))
    + rec(OPENDIR, 2, struct.pack("<II", 0, 0)) + rec(READDIRPLUS, 2, read_in(0, 0, 8192))
    + rec(LOOKUP, ROOTN, z("a")) + rec(OPEN, 3, struct.pack("<II", 2, 0))
    + rec(WRITE_, 3, struct.pack("<QQIIQII", 0, 0, 3, 0, 0, 0, 0) + b"cu\n") + rec(UNLINK, ROOTN, z("a"))
    + rec(RENAME, ROOTN, struct.pack("<Q", 1) + z("d") + z("d2")))

# --- OCI documents ------------------------------------------------------------
def sha(c):
    return "sha256:" + c * 64


config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
          "rootfs": {"type": "layers", "diff_ids": [sha("1"), sha("2")]}}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha("c"), "size": 500},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha("a"), "size": 100},
                       {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": sha("b"), "size": 200}]}
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha("d"), "size": 700,
                        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                       {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha("e"), "size": 700,
                        "platform": {"architecture": "amd64", "os": "linux"}}]}
docker = dict(manifest, mediaType="application/vnd.docker.distribution.manifest.v2+json")
docker["config"] = dict(manifest["config"], mediaType="application/vnd.docker.container.image.v1+json")
docker["layers"] = [dict(l, mediaType="application/vnd.docker.image.rootfs.diff.tar.gzip") for l in manifest["layers"]]
j = lambda o: json.dumps(o).encode()
put("oci_documents", "index", j(index) + b"\0" + j(manifest) + b"\0" + j(config))
put("oci_documents", "manifest", j(manifest) + b"\0" + j(config))
put("oci_documents", "docker", j(docker) + b"\0" + j(config))
put("oci_documents", "nested", j(index) + b"\0" + j(index) + b"\0" + j(manifest) + b"\0" + j(config))
put("oci_documents", "schema1", j({"schemaVersion": 1, "name": "x", "fsLayers": []}))


# --- tar layers ---------------------------------------------------------------
def tar(entries, fmt=tarfile.GNU_FORMAT):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for e in entries:
            name, kind = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            ti.mode = 0o644
            data = b""
            if kind == "file":
                data = e[2]
                ti.size = len(data)
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, e[2]
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, e[2]
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, e[2], e[3]
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            if len(e) > 4 and isinstance(e[-1], dict):
                ti.pax_headers = e[-1]
            t.addfile(ti, io.BytesIO(data) if data else None)
    return out.getvalue()


layers = {
    "files": tar([("usr/", "dir"), ("usr/bin/", "dir"), ("usr/bin/tool", "file", b"\x7fELF" + b"\0" * 600),
                  ("etc/hosts", "file", b"127.0.0.1 localhost\n"), ("big", "file", b"z" * 70000)]),
    "whiteouts": tar([("etc/.wh.passwd", "file", b""), ("bin/.wh..wh..opq", "file", b""),
                      ("bin/new", "file", b"n"), (".wh.sbin", "file", b""), ("sbin/", "dir")]),
    "links": tar([("etc/l2", "hard", "etc/passwd"), ("s", "sym", "/etc/passwd"), ("up", "sym", "../../outside"),
                  ("h2", "hard", "bin/sh"), ("dev/", "dir"), ("dev/null", "chr", 1, 3), ("dev/zero", "chr", 0, 0),
                  ("p", "fifo")]),
    "replace": tar([("etc", "file", b"now a file"), ("bin/sh/", "dir"), ("var/tmp", "sym", "../tmp"),
                    ("etc/", "dir"), ("etc/x", "file", b"x")]),
    "pax": tar([("long/" + "n" * 150 + "/file", "file", b"p", None, {"mtime": "1700000000.5", "SCHILY.xattr.user.k": "v",
                "uid": "1000", "gid": "1000"})], tarfile.PAX_FORMAT),
    "escape": tar([("../x", "file", b"e"), ("/abs", "file", b"a"), ("sbin/evil", "file", b"e"),
                   ("up/y", "file", b"y")]),
}
for name, data in layers.items():
    put("tar_into_ext4", name, data)
    put("tar_into_layerstore", name + "-u", b"\0" + data)
    put("tar_into_layerstore", name + "-root", b"\1" + data)
