//! Entries of test layers: files, directories, links, devices, whiteouts
//! and raw (hostile) tar headers, with their owners, modes, times and xattrs.

/// Default modification time of entries: 2023-11-14T22:13:20Z.
pub const DEFAULT_MTIME: i64 = 1_700_000_000;

/// Ownership, permissions, times and xattrs of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid (0o4000), setgid (0o2000), sticky (0o1000).
    pub mode: u32,
    /// Owner; values past 2097151 are written base-256 plus a PAX `uid` record.
    pub uid: u64,
    /// Group; like `uid`.
    pub gid: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds; when non-zero, written as a PAX `mtime` record `secs.nnnnnnnnn`.
    pub mtime_nsec: u32,
    /// Extended attributes, written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Write names (and link targets) longer than 100 bytes as PAX `path`
    /// (`linkpath`) records instead of GNU long-name entries.
    pub pax_names: bool,
}

impl Meta {
    pub(crate) fn with_mode(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            mtime_nsec: 0,
            xattrs: Vec::new(),
            pax_names: false,
        }
    }
}

/// A tar header written exactly as given: for hostile inputs (`../x`,
/// `/abs`, non-UTF-8 names, odd types). Names longer than 100 bytes go in a
/// PAX `path` record (`linkpath` for link names); nothing is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Name bytes as stored.
    pub path: Vec<u8>,
    /// Tar type flag (`b'0'` file, `b'1'` hardlink, `b'2'` symlink, `b'5'` dir, ...).
    pub entry_type: u8,
    /// Link name bytes as stored.
    pub link_name: Vec<u8>,
    /// Contents (its length is the header size).
    pub data: Vec<u8>,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Seconds.
    pub mtime: u64,
    /// Extra PAX records written before the header.
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Default for RawEntry {
    fn default() -> Self {
        RawEntry {
            path: Vec::new(),
            entry_type: b'0',
            link_name: Vec::new(),
            data: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME as u64,
            pax: Vec::new(),
        }
    }
}

/// One entry of a test layer. Paths are relative (`etc/passwd`); build
/// entries with the constructors and adjust them with the modifiers:
/// `TestEntry::file("bin/x", data).mode(0o4755).owner(1000, 1000)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestEntry {
    /// A directory.
    Dir {
        /// Path.
        path: String,
        /// Metadata.
        meta: Meta,
    },
    /// A regular file.
    File {
        /// Path.
        path: String,
        /// Contents.
        data: Vec<u8>,
        /// Metadata.
        meta: Meta,
    },
    /// A symbolic link.
    Symlink {
        /// Path.
        path: String,
        /// Target, stored verbatim.
        target: String,
        /// Metadata.
        meta: Meta,
    },
    /// A hard link to `target`, a path in this or a lower layer.
    Hardlink {
        /// Path.
        path: String,
        /// Path of the linked file.
        target: String,
        /// Metadata of the header (ignored by extractors).
        meta: Meta,
    },
    /// A character device.
    CharDev {
        /// Path.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Metadata.
        meta: Meta,
    },
    /// A block device.
    BlockDev {
        /// Path.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Metadata.
        meta: Meta,
    },
    /// A named pipe.
    Fifo {
        /// Path.
        path: String,
        /// Metadata.
        meta: Meta,
    },
    /// Deletes the lower layers' entry at this path: written as `DIR/.wh.NAME`.
    Whiteout(String),
    /// Hides the lower layers' contents of this directory: written as `DIR/.wh..wh..opq`.
    Opaque(String),
    /// A header written verbatim.
    Raw(RawEntry),
}

impl TestEntry {
    /// A directory, mode 0755.
    pub fn dir(path: impl Into<String>) -> TestEntry {
        TestEntry::Dir {
            path: path.into(),
            meta: Meta::with_mode(0o755),
        }
    }

    /// A regular file, mode 0644.
    pub fn file(path: impl Into<String>, data: impl Into<Vec<u8>>) -> TestEntry {
        TestEntry::File {
            path: path.into(),
            data: data.into(),
            meta: Meta::with_mode(0o644),
        }
    }

    /// A regular file, mode 0755.
    pub fn executable(path: impl Into<String>, data: impl Into<Vec<u8>>) -> TestEntry {
        TestEntry::File {
            path: path.into(),
            data: data.into(),
            meta: Meta::with_mode(0o755),
        }
    }

    /// A symlink, mode 0777.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> TestEntry {
        TestEntry::Symlink {
            path: path.into(),
            target: target.into(),
            meta: Meta::with_mode(0o777),
        }
    }

    /// A hard link to `target`.
    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> TestEntry {
        TestEntry::Hardlink {
            path: path.into(),
            target: target.into(),
            meta: Meta::with_mode(0o644),
        }
    }

    /// A character device, mode 0666.
    pub fn char_dev(path: impl Into<String>, major: u32, minor: u32) -> TestEntry {
        TestEntry::CharDev {
            path: path.into(),
            major,
            minor,
            meta: Meta::with_mode(0o666),
        }
    }

    /// A block device, mode 0660.
    pub fn block_dev(path: impl Into<String>, major: u32, minor: u32) -> TestEntry {
        TestEntry::BlockDev {
            path: path.into(),
            major,
            minor,
            meta: Meta::with_mode(0o660),
        }
    }

    /// A FIFO, mode 0644.
    pub fn fifo(path: impl Into<String>) -> TestEntry {
        TestEntry::Fifo {
            path: path.into(),
            meta: Meta::with_mode(0o644),
        }
    }

    /// A whiteout deleting `path` from lower layers.
    pub fn whiteout(path: impl Into<String>) -> TestEntry {
        TestEntry::Whiteout(path.into())
    }

    /// An opaque marker for directory `dir`.
    pub fn opaque(dir: impl Into<String>) -> TestEntry {
        TestEntry::Opaque(dir.into())
    }

    /// A raw header with these name bytes and type flag (see [`RawEntry`]).
    pub fn raw(path: impl Into<Vec<u8>>, entry_type: u8) -> TestEntry {
        TestEntry::Raw(RawEntry {
            path: path.into(),
            entry_type,
            ..RawEntry::default()
        })
    }

    /// The name as written to the tar (for whiteouts, the `.wh.` file).
    pub fn tar_path(&self) -> Vec<u8> {
        let split = |p: &str| match p.trim_end_matches('/').rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_string()),
            None => (String::new(), p.trim_end_matches('/').to_string()),
        };
        match self {
            TestEntry::Dir { path, .. }
            | TestEntry::File { path, .. }
            | TestEntry::Symlink { path, .. }
            | TestEntry::Hardlink { path, .. }
            | TestEntry::CharDev { path, .. }
            | TestEntry::BlockDev { path, .. }
            | TestEntry::Fifo { path, .. } => path.clone().into_bytes(),
            TestEntry::Whiteout(p) => {
                let (d, n) = split(p);
                format!("{d}.wh.{n}").into_bytes()
            }
            TestEntry::Opaque(d) => {
                format!("{}/.wh..wh..opq", d.trim_end_matches('/')).into_bytes()
            }
            TestEntry::Raw(r) => r.path.clone(),
        }
    }

    fn meta_mut(&mut self) -> Option<&mut Meta> {
        match self {
            TestEntry::Dir { meta, .. }
            | TestEntry::File { meta, .. }
            | TestEntry::Symlink { meta, .. }
            | TestEntry::Hardlink { meta, .. }
            | TestEntry::CharDev { meta, .. }
            | TestEntry::BlockDev { meta, .. }
            | TestEntry::Fifo { meta, .. } => Some(meta),
            TestEntry::Whiteout(_) | TestEntry::Opaque(_) | TestEntry::Raw(_) => None,
        }
    }

    /// Sets the permission bits (also for raw entries).
    pub fn mode(mut self, mode: u32) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.mode = mode;
        } else if let Some(m) = self.meta_mut() {
            m.mode = mode;
        }
        self
    }

    /// Sets owner and group (also for raw entries).
    pub fn owner(mut self, uid: u64, gid: u64) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            (r.uid, r.gid) = (uid, gid);
        } else if let Some(m) = self.meta_mut() {
            (m.uid, m.gid) = (uid, gid);
        }
        self
    }

    /// Sets the modification time.
    pub fn mtime(mut self, secs: i64, nsec: u32) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.mtime = secs.max(0) as u64;
        } else if let Some(m) = self.meta_mut() {
            (m.mtime, m.mtime_nsec) = (secs, nsec);
        }
        self
    }

    /// Adds an extended attribute.
    pub fn xattr(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.pax
                .push((format!("SCHILY.xattr.{}", name.into()), value.into()));
        } else if let Some(m) = self.meta_mut() {
            m.xattrs.push((name.into(), value.into()));
        }
        self
    }

    /// Writes a long name as a PAX `path` record rather than a GNU long name.
    pub fn pax_names(mut self) -> TestEntry {
        if let Some(m) = self.meta_mut() {
            m.pax_names = true;
        }
        self
    }

    /// For raw entries: sets the link name.
    pub fn link_name(mut self, link: impl Into<Vec<u8>>) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.link_name = link.into();
        }
        self
    }

    /// For raw entries: sets the contents.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.data = data.into();
        }
        self
    }
}
