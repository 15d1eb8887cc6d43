//! The tiny test guest: a few hand-assembled instructions in an ELF file
//! that print on the serial port and end in a chosen way, for fast tests of
//! the VMM's own paths.

use std::path::{Path, PathBuf};

/// What the tiny guest does: print `message` on the serial port, optionally
/// write the boot marker, then end one way or another.
#[derive(Debug, Clone)]
pub struct TinyGuest {
    /// Bytes written to COM1.
    pub message: Vec<u8>,
    /// Write to the boot-marker port first.
    pub boot_marker: bool,
    /// How it ends.
    pub end: TinyEnd,
}

/// How the tiny guest ends.
#[derive(Debug, Clone, Copy)]
pub enum TinyEnd {
    /// Write this status to the exit port.
    Exit(u8),
    /// Pulse reset through the i8042 (what `reboot` does).
    Reset,
    /// Execute UD2 with no IDT: a triple fault.
    TripleFault,
    /// Spin forever (to test external stops).
    Spin,
    /// Count from 1 to `to`, printing `A`, `B`, ... on COM1; at `marker`
    /// write the boot-finished port (a snapshot point); exit with `to`.
    /// The count lives in a register, so a restored VM goes on from it.
    Count {
        /// The last count, and the exit status.
        to: u8,
        /// The count at which the boot-finished port is written.
        marker: u8,
    },
    /// Write 0 to the 32-bit MMIO register at `addr` (below 4 GiB, which
    /// the VMM's page tables identity-map) `writes` times, then exit with
    /// `status`: a guest hammering a device.
    FloodThenExit {
        /// The register's guest-physical address.
        addr: u32,
        /// How many writes.
        writes: u32,
        /// The exit status afterwards.
        status: u8,
    },
}

/// Where the tiny guest is loaded (and entered).
pub const TINY_GUEST_ADDR: u64 = 0x10_0000;

impl TinyGuest {
    /// Hand-assembled 64-bit code. The VMM enters it in long mode.
    pub fn code(&self) -> Vec<u8> {
        let mut c: Vec<u8> = Vec::new();
        if self.boot_marker {
            c.extend([0xb0, 0x01, 0xe6, 0xf5]); // mov al,1; out 0xf5,al
        }
        c.extend([0x66, 0xba, 0xf8, 0x03]); // mov dx,0x3f8
        let lea_at = c.len();
        c.extend([0x48, 0x8d, 0x35, 0, 0, 0, 0]); // lea rsi,[rip+msg]
                                                  // loop: lodsb; test al,al; jz done; out dx,al; jmp loop
        c.extend([0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8]);
        match self.end {
            TinyEnd::Exit(s) => c.extend([0xb0, s, 0xe6, 0xf4]), // mov al,s; out 0xf4,al
            TinyEnd::Reset => c.extend([0xb0, 0xfe, 0xe6, 0x64]), // mov al,0xfe; out 0x64,al
            TinyEnd::TripleFault => c.extend([0x0f, 0x0b]),      // ud2
            TinyEnd::Spin => {}
            TinyEnd::Count { to, marker } => {
                c.extend([0x31, 0xdb]); // xor ebx,ebx
                                        // loop: inc ebx; mov eax,ebx; add al,0x40; out dx,al
                c.extend([0xff, 0xc3, 0x89, 0xd8, 0x04, 0x40, 0xee]);
                // cmp ebx,marker; jne +4; mov al,1; out 0xf5,al
                c.extend([0x83, 0xfb, marker, 0x75, 0x04, 0xb0, 0x01, 0xe6, 0xf5]);
                // cmp ebx,to; jne loop (21 bytes back); mov eax,ebx; out 0xf4,al
                c.extend([0x83, 0xfb, to, 0x75, 0xeb, 0x89, 0xd8, 0xe6, 0xf4]);
            }
            TinyEnd::FloodThenExit {
                addr,
                writes,
                status,
            } => {
                c.push(0xbf); // mov edi,addr (zero-extended into rdi)
                c.extend(addr.to_le_bytes());
                c.push(0xb9); // mov ecx,writes
                c.extend(writes.to_le_bytes());
                c.extend([0x31, 0xc0]); // xor eax,eax
                                        // loop: mov [rdi],eax; dec ecx; jnz loop
                c.extend([0x89, 0x07, 0xff, 0xc9, 0x75, 0xfa]);
                c.extend([0xb0, status, 0xe6, 0xf4]); // mov al,status; out 0xf4,al
            }
        }
        c.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp hlt (spin)
        let msg_at = c.len();
        let rel = (msg_at - (lea_at + 7)) as i32;
        c[lea_at + 3..lea_at + 7].copy_from_slice(&rel.to_le_bytes());
        c.extend(&self.message);
        c.push(0);
        c
    }

    /// An ELF64 file with the code as one loadable segment.
    pub fn elf(&self) -> Vec<u8> {
        let code = self.code();
        let paddr = TINY_GUEST_ADDR;
        let mut f = vec![0u8; 0x78];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&paddr.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f.extend_from_slice(&code);
        f
    }

    /// Writes the ELF into `dir` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.elf()).unwrap();
        p
    }
}
