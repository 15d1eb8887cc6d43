//! Read access to the files of an image layout or archive: in a directory
//! ([`DirFiles`]) or inside a tar read in place ([`TarFiles`]: an index of
//! member offsets, no extraction).

use super::SourceError;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Read access to the files of a layout or archive by relative `/`-separated path.
pub(crate) trait Files: Send {
    /// Opens a file: its contents and size, or None if it does not exist.
    fn open(&self, path: &str) -> io::Result<Option<(Box<dyn Read + Send + '_>, u64)>>;

    /// Where the files are, for messages.
    fn location(&self) -> String;
}

/// Files in a directory.
pub(crate) struct DirFiles {
    pub(super) root: PathBuf,
}

impl Files for DirFiles {
    fn open(&self, path: &str) -> io::Result<Option<(Box<dyn Read + Send + '_>, u64)>> {
        let p = self.root.join(path);
        match File::open(&p) {
            Ok(f) => {
                let meta = f.metadata()?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some((
                    Box::new(BufReader::with_capacity(256 << 10, f)),
                    meta.len(),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

/// How many links [`TarFiles`] follows before giving up.
const MAX_LINKS: usize = 16;

enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// A hard or symbolic link, target already made absolute within the archive.
    Link(String),
}

/// The members of a tar file, read in place: each open seeks to the data.
pub(crate) struct TarFiles {
    path: PathBuf,
    members: HashMap<String, Member>,
}

/// `a/./b/../c/` -> `a/c`; leading `/` and `..` above the root are dropped.
pub(super) fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl TarFiles {
    /// Indexes the tar file at `path`.
    pub(crate) fn open(image: &str, path: &Path) -> Result<TarFiles, SourceError> {
        let what = format!("archive {}", path.display());
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SourceError::NotFound {
                image: image.to_string(),
                what: what.clone(),
            },
            _ => SourceError::Io {
                image: image.to_string(),
                what: what.clone(),
                source: e,
            },
        })?;
        let bad = |e: io::Error| {
            // The tar crate quotes raw header bytes: keep the message to one short line.
            let full = e.to_string();
            let mut e: String = full
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(100)
                .collect();
            if full.chars().count() > 100 {
                e.push_str("...");
            }
            SourceError::Invalid {
                image: image.to_string(),
                detail: format!(
                    "{} is not a valid tar archive (compressed archives are not supported): {e}",
                    path.display()
                ),
            }
        };
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(BufReader::new(file));
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let p = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Link => match entry.link_name_bytes() {
                    Some(t) => Member::Link(normalize(&String::from_utf8_lossy(&t))),
                    None => continue,
                },
                tar::EntryType::Symlink => match entry.link_name_bytes() {
                    Some(t) => {
                        let t = String::from_utf8_lossy(&t);
                        let parent = p.rsplit_once('/').map_or("", |(d, _)| d);
                        Member::Link(if t.starts_with('/') {
                            normalize(&t)
                        } else {
                            normalize(&format!("{parent}/{t}"))
                        })
                    }
                    None => continue,
                },
                _ => continue,
            };
            members.insert(p, member);
        }
        if members.is_empty() {
            return Err(bad(io::Error::new(
                io::ErrorKind::InvalidData,
                "it holds no files",
            )));
        }
        Ok(TarFiles {
            path: path.to_path_buf(),
            members,
        })
    }
}

impl Files for TarFiles {
    fn open(&self, path: &str) -> io::Result<Option<(Box<dyn Read + Send + '_>, u64)>> {
        let mut p = normalize(path);
        for _ in 0..MAX_LINKS {
            match self.members.get(&p) {
                None => return Ok(None),
                Some(Member::Link(t)) => p = t.clone(),
                Some(Member::File { offset, size }) => {
                    let mut f = File::open(&self.path)?;
                    f.seek(SeekFrom::Start(*offset))?;
                    let r = BufReader::with_capacity(256 << 10, f.take(*size));
                    return Ok(Some((Box::new(r), *size)));
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: too many levels of links in the archive"),
        ))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_member_paths() {
        assert_eq!(normalize("./a/b/"), "a/b");
        assert_eq!(normalize("/a//./b/../c"), "a/c");
        assert_eq!(normalize("../../x"), "x");
        assert_eq!(normalize("."), "");
    }
}
