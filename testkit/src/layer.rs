//! Layer tars written entry by entry (PAX records for long names, big ids,
//! nanosecond times and xattrs), and their compression.

use crate::entry::{Meta, RawEntry, TestEntry};
use crate::error::TestImageError;
use imagefs::layer::Compression;
use std::io::Write;
use std::path::Path;

/// Largest value the 8-byte octal uid/gid fields hold.
const MAX_OCTAL_ID: u64 = 0o7_777_777;

fn put_name(field: &mut [u8], name: &[u8]) {
    let n = name.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&name[..n]);
}

fn append_raw(b: &mut tar::Builder<Vec<u8>>, r: &RawEntry) -> std::io::Result<()> {
    let mut pax: Vec<(String, Vec<u8>)> = r.pax.clone();
    if r.path.len() > 100 {
        pax.push(("path".to_string(), r.path.clone()));
    }
    if r.link_name.len() > 100 {
        pax.push(("linkpath".to_string(), r.link_name.clone()));
    }
    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(r.entry_type));
    h.set_mode(r.mode);
    h.set_uid(r.uid);
    h.set_gid(r.gid);
    h.set_mtime(r.mtime);
    h.set_size(r.data.len() as u64);
    let old = h.as_old_mut();
    put_name(&mut old.name, &r.path);
    put_name(&mut old.linkname, &r.link_name);
    h.set_cksum();
    b.append(&h, &r.data[..])
}

fn append_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    meta: &Meta,
    data: &[u8],
    link: Option<&str>,
    dev: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(meta.uid);
    h.set_gid(meta.gid);
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_size(data.len() as u64);
    if let Some((major, minor)) = dev {
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
    }
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if meta.mtime_nsec != 0 || meta.mtime < 0 {
        pax.push((
            "mtime".to_string(),
            format!("{}.{:09}", meta.mtime, meta.mtime_nsec).into_bytes(),
        ));
    }
    if meta.uid > MAX_OCTAL_ID {
        pax.push(("uid".to_string(), meta.uid.to_string().into_bytes()));
    }
    if meta.gid > MAX_OCTAL_ID {
        pax.push(("gid".to_string(), meta.gid.to_string().into_bytes()));
    }
    for (k, v) in &meta.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    let pax_path = meta.pax_names && path.len() > 100;
    let pax_link = meta.pax_names && link.is_some_and(|l| l.len() > 100);
    if pax_path {
        pax.push(("path".to_string(), path.as_bytes().to_vec()));
    }
    if pax_link {
        pax.push((
            "linkpath".to_string(),
            link.unwrap_or_default().as_bytes().to_vec(),
        ));
    }
    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    if meta.pax_names {
        // Names go in the header (truncated when a PAX record has the full one).
        let old = h.as_old_mut();
        put_name(&mut old.name, path.as_bytes());
        put_name(&mut old.linkname, link.unwrap_or_default().as_bytes());
        h.set_cksum();
        return b.append(&h, data);
    }
    match link {
        Some(target) => b.append_link(&mut h, path, target),
        None => b.append_data(&mut h, path, data),
    }
}

/// The uncompressed tar of one layer.
pub fn layer_tar(entries: &[TestEntry]) -> std::io::Result<Vec<u8>> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            TestEntry::Dir { path, meta } => {
                append_entry(&mut b, T::Directory, path, meta, &[], None, None)?
            }
            TestEntry::File { path, data, meta } => {
                append_entry(&mut b, T::Regular, path, meta, data, None, None)?
            }
            TestEntry::Symlink { path, target, meta } => {
                append_entry(&mut b, T::Symlink, path, meta, &[], Some(target), None)?
            }
            TestEntry::Hardlink { path, target, meta } => {
                append_entry(&mut b, T::Link, path, meta, &[], Some(target), None)?
            }
            TestEntry::CharDev {
                path,
                major,
                minor,
                meta,
            }
            | TestEntry::BlockDev {
                path,
                major,
                minor,
                meta,
            } => {
                let kind = if matches!(e, TestEntry::CharDev { .. }) {
                    T::Char
                } else {
                    T::Block
                };
                let dev = Some((*major, *minor));
                append_entry(&mut b, kind, path, meta, &[], None, dev)?
            }
            TestEntry::Fifo { path, meta } => {
                append_entry(&mut b, T::Fifo, path, meta, &[], None, None)?
            }
            TestEntry::Whiteout(_) | TestEntry::Opaque(_) => {
                let p = String::from_utf8(e.tar_path()).expect("whiteout paths are UTF-8");
                append_entry(
                    &mut b,
                    T::Regular,
                    &p,
                    &Meta::with_mode(0o644),
                    &[],
                    None,
                    None,
                )?
            }
            TestEntry::Raw(r) => append_raw(&mut b, r)?,
        }
    }
    b.into_inner()
}

/// Compresses a tar per `compression`.
pub fn compress(tar: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(tar.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar)?;
            e.finish()
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 3),
    }
}

/// Writes a tar file of directories, files and symlinks (`(path, target)`).
pub(crate) fn write_tar(
    file: &Path,
    dirs: &[&str],
    files: &[(String, Vec<u8>)],
    symlinks: &[(String, String)],
) -> Result<(), TestImageError> {
    let mut entries: Vec<TestEntry> = dirs.iter().map(|d| TestEntry::dir(*d)).collect();
    entries.extend(
        files
            .iter()
            .map(|(p, d)| TestEntry::file(p.clone(), d.clone())),
    );
    entries.extend(
        symlinks
            .iter()
            .map(|(p, t)| TestEntry::symlink(p.clone(), t.clone())),
    );
    let tar =
        layer_tar(&entries).map_err(TestImageError::io(format!("building {}", file.display())))?;
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .map_err(TestImageError::io(format!("creating {}", parent.display())))?;
    }
    std::fs::write(file, tar).map_err(TestImageError::io(format!("writing {}", file.display())))
}
