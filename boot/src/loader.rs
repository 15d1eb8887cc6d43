//! Loading the kernel (ELF `vmlinux` or bzImage) and the initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, GuestMemoryRegion};

use crate::filemap::PageMapper;
use crate::layout::{HIMEM_START, MMIO_GAP_START};
use crate::GuestMemory;

/// bzImage `xloadflags` bit: the kernel has a 64-bit entry at `load + 0x200`.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry point in a loaded bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Highest initrd end for kernels that do not say (the boot protocol's default).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors from loading a kernel or initrd; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Neither an ELF file nor a bzImage.
    #[error("{path} is not a Linux kernel: neither an ELF vmlinux nor a bzImage (no 'HdrS' boot header)")]
    NotAKernel { path: PathBuf },
    /// linux-loader rejected the ELF file.
    #[error("cannot load ELF kernel {path}: {reason}")]
    Elf { path: PathBuf, reason: String },
    /// linux-loader rejected the bzImage.
    #[error("cannot load bzImage {path}: {reason}")]
    BzImage { path: PathBuf, reason: String },
    /// A bzImage without a 64-bit entry point (boot protocol < 2.12 or 32-bit only).
    #[error("{path}: bzImage has no 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})")]
    No64BitEntry {
        path: PathBuf,
        version: u16,
        xloadflags: u16,
    },
    /// The kernel (with its in-place decompression area) does not fit in guest RAM.
    #[error("{path} needs guest memory up to {needed:#x}, but RAM ends at {ram_end:#x}: use a larger --mem")]
    TooBig {
        path: PathBuf,
        needed: u64,
        ram_end: u64,
    },
    /// An initrd of no parts.
    #[error("an initrd needs at least one file")]
    NoInitrd,
    /// The initrd does not fit below the highest address the kernel accepts.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory between {low:#x} and {high:#x}"
    )]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        low: u64,
        high: u64,
    },
}

/// How the kernel was recognised.
#[derive(Debug, Clone, Copy)]
pub enum KernelFormat {
    /// An uncompressed ELF (e.g. vmlinux), entered at its ELF entry in 64-bit mode.
    Elf,
    /// A bzImage; its setup header goes into the zero page.
    BzImage(setup_header),
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the vCPU starts, in 64-bit mode with `rsi` = zero page.
    pub entry: GuestAddress,
    /// First address after the kernel image (and its working area).
    pub end: u64,
    /// ELF or bzImage.
    pub format: KernelFormat,
}

/// Where an initrd was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest address (page aligned).
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

fn ram_end_below_4g(mem: &GuestMemory) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|&end| end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a kernel or initrd file's bytes reach guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// Copied: the file may change or go once loaded.
    Copied,
    /// Whole pages mapped privately from the file ([`crate::filemap`]): only
    /// for a file that is never rewritten or truncated.
    Mapped,
}

/// Loads the kernel at `path`: an ELF `vmlinux` (preferred: no in-guest
/// decompression) or a bzImage with a 64-bit entry point.
pub fn load_kernel(
    mem: &GuestMemory,
    path: &Path,
    pages: Pages,
) -> Result<LoadedKernel, LoadError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let ram_end = mem.last_addr().raw_value() + 1;

    if n == 4 && magic == *b"\x7fELF" {
        let himem = Some(GuestAddress(HIMEM_START));
        let loaded = match pages {
            Pages::Copied => Elf::load(mem, None, &mut file, himem),
            Pages::Mapped => {
                let mut mapper = PageMapper::new(&file).map_err(io_err(path))?;
                Elf::load(mem, None, &mut mapper, himem)
            }
        };
        let r = loaded.map_err(|e| LoadError::Elf {
            path: path.to_path_buf(),
            reason: describe_loader_error(e, ram_end),
        })?;
        return Ok(LoadedKernel {
            entry: r.kernel_load,
            end: r.kernel_end,
            format: KernelFormat::Elf,
        });
    }

    let r =
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(
            |e| match e {
                linux_loader::loader::Error::Bzimage(
                    linux_loader::loader::bzimage::Error::InvalidBzImage,
                ) => LoadError::NotAKernel {
                    path: path.to_path_buf(),
                },
                e => LoadError::BzImage {
                    path: path.to_path_buf(),
                    reason: describe_loader_error(e, ram_end),
                },
            },
        )?;
    let hdr = r.setup_header.ok_or_else(|| LoadError::NotAKernel {
        path: path.to_path_buf(),
    })?;
    if hdr.version < 0x20c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoadError::No64BitEntry {
            path: path.to_path_buf(),
            version: hdr.version,
            xloadflags: hdr.xloadflags,
        });
    }
    // The decompressor works in place and needs init_size bytes from the load address.
    let needed = r.kernel_load.raw_value()
        + u64::from(hdr.init_size).max(r.kernel_end - r.kernel_load.raw_value());
    if needed > ram_end_below_4g(mem) {
        return Err(LoadError::TooBig {
            path: path.to_path_buf(),
            needed,
            ram_end: ram_end_below_4g(mem),
        });
    }
    Ok(LoadedKernel {
        entry: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
        end: needed,
        format: KernelFormat::BzImage(hdr),
    })
}

fn describe_loader_error(e: linux_loader::loader::Error, ram_end: u64) -> String {
    use linux_loader::loader::{elf, Error};
    match e {
        Error::Elf(elf::Error::ReadKernelImage) | Error::MemoryOverflow => {
            format!("a segment lies outside guest memory (RAM ends at {ram_end:#x}); use a larger --mem")
        }
        Error::Elf(elf::Error::InvalidEntryAddress) => {
            format!("entry point below {HIMEM_START:#x}")
        }
        e => e.to_string(),
    }
}

/// Loads the initrd as high as possible below the kernel's `initrd_addr_max`
/// and the end of low RAM, page aligned, above `kernel_end`. Its `parts`
/// (cpio archives, which Linux unpacks one after the other, skipping the
/// zeros between them) each start on a page, so that whole pages of each
/// can be mapped.
pub fn load_initrd(
    mem: &GuestMemory,
    parts: &[(&Path, Pages)],
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, LoadError> {
    let Some(&(first, _)) = parts.first() else {
        return Err(LoadError::NoInitrd);
    };
    let mut files = Vec::with_capacity(parts.len());
    let mut size = 0u64;
    for &(path, pages) in parts {
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let at = size.next_multiple_of(4096);
        size = at.saturating_add(len);
        files.push((path, pages, file, at, len));
    }
    let addr_max = match kernel.format {
        KernelFormat::BzImage(hdr) if hdr.initrd_addr_max != 0 => u64::from(hdr.initrd_addr_max),
        _ => DEFAULT_INITRD_ADDR_MAX,
    };
    let high = ram_end_below_4g(mem).min(addr_max.saturating_add(1));
    let low = kernel.end.next_multiple_of(4096);
    let too_big = || LoadError::InitrdTooBig {
        path: first.to_path_buf(),
        size,
        low,
        high,
    };
    let start = high.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if start < low {
        return Err(too_big());
    }
    for (path, pages, mut file, at, len) in files {
        let len = usize::try_from(len).map_err(|_| too_big())?;
        let addr = GuestAddress(start + at);
        let read = match pages {
            Pages::Copied => mem.read_exact_volatile_from(addr, &mut file, len),
            Pages::Mapped => {
                let mut mapper = PageMapper::new(&file).map_err(io_err(path))?;
                mem.read_exact_volatile_from(addr, &mut mapper, len)
            }
        };
        read.map_err(|e| LoadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    }
    Ok(LoadedInitrd {
        addr: GuestAddress(start),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn temp_file(name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("minivm-boot-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(data).unwrap();
        p
    }

    /// A minimal ELF64 with one PT_LOAD segment of `code` at `paddr`.
    pub(crate) fn tiny_elf(paddr: u64, code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x78];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        f[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // p_offset
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn loads_elf_at_its_physical_address() {
        let p = temp_file("elf", &tiny_elf(0x20_0000, &[0xf4, 0xeb, 0xfd]));
        let m = mem(4 << 20);
        let k = load_kernel(&m, &p, Pages::Copied).unwrap();
        assert_eq!(k.entry, GuestAddress(0x20_0000));
        assert_eq!(k.end, 0x20_0003);
        assert!(matches!(k.format, KernelFormat::Elf));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0xf4);
    }

    #[test]
    fn a_mapped_elf_loads_the_same_bytes() {
        // The segment at file offset 0x1000 for guest 0x20_0000: whole pages map.
        let code: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 251) as u8).collect();
        let mut elf = tiny_elf(0x20_0000, &code);
        elf.truncate(0x78);
        elf[64 + 8..64 + 16].copy_from_slice(&0x1000u64.to_le_bytes());
        elf.resize(0x1000, 0);
        elf.extend_from_slice(&code);
        let p = temp_file("elf-mapped", &elf);
        for pages in [Pages::Copied, Pages::Mapped] {
            let m = mem(4 << 20);
            let k = load_kernel(&m, &p, pages).unwrap();
            assert_eq!(k.entry, GuestAddress(0x20_0000));
            assert_eq!(k.end, 0x20_0000 + code.len() as u64);
            let mut back = vec![0u8; code.len() + 100];
            m.read_slice(&mut back, GuestAddress(0x20_0000)).unwrap();
            assert_eq!(back[..code.len()], code[..], "{pages:?}");
            assert!(back[code.len()..].iter().all(|&b| b == 0), "{pages:?}");
        }
    }

    #[test]
    fn elf_outside_ram_is_a_clear_error() {
        let p = temp_file("elf-high", &tiny_elf(0x100_0000, &[0xf4]));
        let err = load_kernel(&mem(4 << 20), &p, Pages::Copied)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside guest memory"), "{err}");
        assert!(err.contains("elf-high"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let p = temp_file("garbage", &vec![0x55u8; 8192]);
        let err = load_kernel(&mem(4 << 20), &p, Pages::Copied).unwrap_err();
        assert!(matches!(err, LoadError::NotAKernel { .. }), "{err}");
        let p = temp_file("empty", b"");
        assert!(load_kernel(&mem(4 << 20), &p, Pages::Copied).is_err());
        let missing = Path::new("/nonexistent/minivm-kernel");
        let err = load_kernel(&mem(4 << 20), missing, Pages::Copied)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/minivm-kernel"), "{err}");
    }

    #[test]
    fn fake_bzimage_without_64bit_entry_is_rejected() {
        let mut img = vec![0u8; 0x2000];
        img[0x1f1] = 1; // setup_sects
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20bu16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        let p = temp_file("bz32", &img);
        let err = load_kernel(&mem(8 << 20), &p, Pages::Copied).unwrap_err();
        assert!(
            matches!(err, LoadError::No64BitEntry { version: 0x20b, .. }),
            "{err}"
        );
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let m = mem(16 << 20);
        let k = LoadedKernel {
            entry: GuestAddress(HIMEM_START),
            end: 0x20_0000,
            format: KernelFormat::Elf,
        };
        let p = temp_file("initrd", &[7u8; 5000]);
        let i = load_initrd(&m, &[(&p, Pages::Copied)], &k).unwrap();
        assert_eq!(i.size, 5000);
        assert_eq!(i.addr.raw_value() % 4096, 0);
        assert!(i.addr.raw_value() + 5000 <= 16 << 20);
        assert!(i.addr.raw_value() >= (16 << 20) - 8192);
        assert_eq!(m.read_obj::<u8>(i.addr.unchecked_add(4999)).unwrap(), 7);

        let big = temp_file("initrd-big", &vec![0u8; 15 << 20]);
        let err = load_initrd(&m, &[(&big, Pages::Copied)], &k).unwrap_err();
        assert!(matches!(err, LoadError::InitrdTooBig { .. }), "{err}");
        assert!(matches!(load_initrd(&m, &[], &k), Err(LoadError::NoInitrd)));
    }

    #[test]
    fn initrd_parts_each_start_on_a_page() {
        let m = mem(16 << 20);
        let k = LoadedKernel {
            entry: GuestAddress(HIMEM_START),
            end: 0x20_0000,
            format: KernelFormat::Elf,
        };
        let a: Vec<u8> = (0..2 * 4096 + 10).map(|i| (i % 13 + 1) as u8).collect();
        let pa = temp_file("initrd-a", &a);
        let pb = temp_file("initrd-b", &[9u8; 300]);
        let i = load_initrd(&m, &[(&pa, Pages::Mapped), (&pb, Pages::Copied)], &k).unwrap();
        assert_eq!(i.size, 3 * 4096 + 300);
        let mut back = vec![0u8; i.size as usize];
        m.read_slice(&mut back, i.addr).unwrap();
        assert_eq!(back[..a.len()], a[..]);
        assert!(back[a.len()..3 * 4096].iter().all(|&b| b == 0));
        assert!(back[3 * 4096..].iter().all(|&b| b == 9));
        let missing = Path::new("/nonexistent/part");
        let err = load_initrd(&m, &[(&pa, Pages::Copied), (missing, Pages::Copied)], &k);
        assert!(err.unwrap_err().to_string().contains("/nonexistent/part"));
    }
}
