//! Reading a file into guest memory by mapping its pages instead of copying
//! them, for kernels that are never rewritten in place.
//!
//! A 16 MiB `vmlinux` copied into fresh anonymous memory costs one page
//! fault and one zeroed page per 4 KiB before the copy itself: most of
//! minivm's start. Mapped privately (copy-on-write) from the page cache,
//! the same pages cost one `mmap`, and the guest faults in only those it
//! touches, sharing the unwritten ones with every other VM booting that
//! kernel.
//!
//! The price is that a mapped page stays tied to the file: if the file were
//! rewritten in place the guest would see the new bytes, and if it were
//! truncated an access would fault (SIGBUS). So this is only for files
//! published by rename and never written again; the caller decides.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::Error as VolatileMemoryError;
use vm_memory::{ReadVolatile, VolatileSlice};

const PAGE: u64 = 4096;

/// A reader over `file` whose [`ReadVolatile`] maps every whole page it can
/// (where the file offset and the destination share their offset within a
/// page) and copies the rest. Reads and seeks move the file's own offset.
pub struct PageMapper<'a> {
    file: &'a File,
    len: u64,
}

impl<'a> PageMapper<'a> {
    /// A mapper over `file`, whose length must not change while the mapped
    /// pages live.
    pub fn new(file: &'a File) -> std::io::Result<Self> {
        Ok(Self {
            file,
            len: file.metadata()?.len(),
        })
    }

    /// Maps `[pos, pos + len)` of the file over `dst`, whole pages only:
    /// returns how many bytes of the start of `dst` are now the file's, or
    /// 0 when the range does not allow it (copy instead).
    fn map_pages(&self, dst: usize, pos: u64, len: usize) -> usize {
        if !(dst as u64).is_multiple_of(PAGE) || !pos.is_multiple_of(PAGE) {
            return 0;
        }
        // Pages past the end of the file would fault on access: never map them.
        let in_file = self.len.saturating_sub(pos);
        let n = (len as u64).min(in_file) / PAGE * PAGE;
        if n == 0 {
            return 0;
        }
        let Ok(offset) = libc::off_t::try_from(pos) else {
            return 0;
        };
        // SAFETY: [dst, dst + n) lies inside the VolatileSlice our caller
        // was given, i.e. inside a live guest memory mapping that the guest
        // memory object owns and unmaps as a whole on drop; MAP_FIXED only
        // replaces those pages with private, writable pages of the file,
        // whose contents are what a copy would have put there.
        let p = unsafe {
            libc::mmap(
                dst as *mut libc::c_void,
                n as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            // The pages are as they were: the caller copies instead.
            return 0;
        }
        n as usize
    }
}

impl Read for PageMapper<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for PageMapper<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for PageMapper<'_> {
    /// Fills `buf` as far as the file goes (vm-memory takes one short read
    /// for the end of the file): the part before the destination's first
    /// page boundary copied, whole pages mapped where the file offset lines
    /// up, and the rest copied.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let dst = buf.ptr_guard_mut().as_ptr() as usize;
        let head = (((PAGE - dst as u64 % PAGE) % PAGE) as usize).min(buf.len());
        let mut done = self.copy(&mut buf.subslice(0, head)?)?;
        if done < head {
            return Ok(done);
        }
        let pos = self
            .file
            .stream_position()
            .map_err(VolatileMemoryError::IOError)?;
        let mapped = self.map_pages(dst + done, pos, buf.len() - done);
        if mapped > 0 {
            buf.bitmap().mark_dirty(done, mapped);
            self.file
                .seek(SeekFrom::Current(mapped as i64))
                .map_err(VolatileMemoryError::IOError)?;
            done += mapped;
        }
        Ok(done + self.copy(&mut buf.offset(done)?)?)
    }
}

impl PageMapper<'_> {
    /// Copies into all of `buf`, or up to the end of the file.
    fn copy<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_volatile(&mut buf.offset(done)?) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(VolatileMemoryError::IOError(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

    fn temp_file(name: &str, data: &[u8]) -> (std::path::PathBuf, File) {
        let p = std::env::temp_dir().join(format!("minivm-filemap-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(data).unwrap();
        let f = File::open(&p).unwrap();
        (p, f)
    }

    /// Whether guest address `addr` is backed by a mapping of `path`.
    fn mapped_from(mem: &crate::GuestMemory, addr: u64, path: &std::path::Path) -> bool {
        let host = mem.get_host_address(GuestAddress(addr)).unwrap() as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| {
            let range = l.split(' ').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            (a..b).contains(&host) && l.ends_with(path.to_str().unwrap())
        })
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn whole_pages_are_mapped_and_the_edges_copied() {
        let data = pattern(5 * 4096 + 100);
        let (path, file) = temp_file("aligned", &data);
        let mem = crate::GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // From file offset 0x800 to guest 0x10800: same offset in the page,
        // so the pages at 0x11000.. are the file's and both ends copied.
        let mut r = PageMapper::new(&file).unwrap();
        r.seek(SeekFrom::Start(0x800)).unwrap();
        let len = data.len() - 0x800;
        mem.read_exact_volatile_from(GuestAddress(0x1_0800), &mut r, len)
            .unwrap();
        let mut back = vec![0u8; len];
        mem.read_slice(&mut back, GuestAddress(0x1_0800)).unwrap();
        assert_eq!(back, data[0x800..]);
        assert!(mapped_from(&mem, 0x1_1000, &path));
        assert!(mapped_from(&mem, 0x1_4fff, &path));
        assert!(!mapped_from(&mem, 0x1_0800, &path), "the head is copied");
        assert!(
            !mapped_from(&mem, 0x1_5000, &path),
            "the partial tail is copied"
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1_5000 + 100)).unwrap(), 0);

        // Private: a guest write changes neither the file nor the next load.
        mem.write_obj(0xffu8, GuestAddress(0x1_2000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn misaligned_or_short_files_are_copied_and_eof_is_an_error() {
        let data = pattern(3 * 4096);
        let (path, file) = temp_file("misaligned", &data);
        let mem = crate::GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut r = PageMapper::new(&file).unwrap();
        r.seek(SeekFrom::Start(0x10)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x2_0000), &mut r, data.len() - 0x10)
            .unwrap();
        let mut back = vec![0u8; data.len() - 0x10];
        mem.read_slice(&mut back, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(back, data[0x10..]);
        assert!(!mapped_from(&mem, 0x2_1000, &path));

        // Asking for more than the file holds maps nothing past its end and fails.
        let mut r = PageMapper::new(&file).unwrap();
        let err = mem.read_exact_volatile_from(GuestAddress(0x4_0000), &mut r, 4 * 4096);
        assert!(err.is_err());
        assert!(!mapped_from(&mem, 0x4_3000, &path));
        std::fs::remove_file(path).unwrap();
    }
}
