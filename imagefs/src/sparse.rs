//! Copying sparse disk images cheaply: a reflink (FICLONE) where the
//! filesystem shares blocks (btrfs, xfs, bcachefs), else only the data regions.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `FICLONE` from linux/fs.h: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` share `src`'s blocks. Fails (EOPNOTSUPP, EXDEV, EINVAL) where
/// the filesystem cannot.
pub fn reflink(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies `src` into the empty file `dst`: a reflink if possible, else the
/// data regions only, so holes stay holes. Returns whether it was a reflink.
pub fn clone_or_copy(src: &File, dst: &File) -> io::Result<bool> {
    if reflink(src, dst).is_ok() {
        return Ok(true);
    }
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut pos: i64 = 0;
    let len = len as i64;
    while pos < len {
        // SAFETY: lseek on an open fd.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        copy_range(src, dst, data, hole - data)?;
        pos = hole;
    }
    Ok(false)
}

fn copy_range(src: &File, dst: &File, start: i64, mut n: i64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while n > 0 {
        let chunk = n.min(1 << 30) as usize;
        // SAFETY: both fds are open; the offsets are local variables the kernel updates.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shrank while copying",
            ));
        }
        n -= r as i64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = std::env::temp_dir();
        let (a, b) = (
            dir.join(format!("minivm-sparse-a-{}", std::process::id())),
            dir.join(format!("minivm-sparse-b-{}", std::process::id())),
        );
        let mut f = File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 4096)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        drop(f);
        let src = File::open(&a).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&b)
            .unwrap();
        clone_or_copy(&src, &dst).unwrap();
        let m = dst.metadata().unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 4 << 20,
            "copy is not sparse: {} bytes",
            m.blocks() * 512
        );
        let mut all = Vec::new();
        File::open(&b).unwrap().read_to_end(&mut all).unwrap();
        let mut want = vec![0u8; 64 << 20];
        want[10 << 20..(10 << 20) + 8192].fill(7);
        want[(64 << 20) - 4096..].fill(9);
        assert!(all == want);
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
    }
}
