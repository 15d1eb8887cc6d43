"""The tiny guest of the benchmarks: a few instructions in an ELF file that
print a message on COM1 and leave through the exit port with a status (or
spin). The code is valid in both 32-bit protected mode (QEMU's PVH entry)
and 64-bit mode (minivm's entry)."""
import struct

ADDR = 0x100000


def write(path, message=b"tiny guest says hi\n", status=0, spin=False):
    code = b"\x66\xba\xf8\x03"  # mov dx,0x3f8
    for c in message:
        code += bytes([0xB0, c, 0xEE])  # mov al,c; out dx,al
    if not spin:
        code += bytes([0xB0, status, 0xE6, 0xF4])  # mov al,status; out 0xf4,al
    code += b"\xf4\xeb\xfd"  # hlt; jmp hlt
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", ADDR)  # XEN_ELFNOTE_PHYS32_ENTRY
    ehdr_size, phdr_size = 64, 56
    note_off = ehdr_size + 2 * phdr_size
    code_off = note_off + len(note)
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, ADDR, ehdr_size, 0, 0, ehdr_size, phdr_size, 2, 0, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, ADDR, ADDR, len(code), len(code), 0x1000)
    notep = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    with open(path, "wb") as f:
        f.write(ehdr + load + notep + note + code)
