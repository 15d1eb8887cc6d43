//! What `minivm run IMAGE` boots: the one rule that turns the positional
//! argument into a disk, a root directory or an image reference.
//!
//! 1. With a transport (`docker://`, `oci:`, `oci-archive:`,
//!    `docker-archive:`) it is an image reference, unless a file or
//!    directory of that very name exists too: then it is ambiguous, and the
//!    user says which with `--oci`, `--image` or `--rootfs`.
//! 2. Otherwise an existing directory is a root directory (virtio-fs) and an
//!    existing file a raw disk (virtio-blk).
//! 3. Otherwise something written as a path (`/…`, `./…`, `../…`, `~…`, or
//!    a name ending in `.raw`, `.img` or `.ext4`) is a missing file.
//! 4. Otherwise it is an image name in Docker's short form, `NAME[:TAG]` or
//!    `NAME@DIGEST`, read as `docker://NAME`: `alpine` is
//!    `docker://docker.io/library/alpine:latest`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use imagefs::reference::ImageRef;

/// Transports that make an argument an image reference.
const TRANSPORTS: [&str; 4] = ["docker://", "oci:", "oci-archive:", "docker-archive:"];
/// Endings that make a name a disk file.
const DISK_SUFFIXES: [&str; 3] = [".raw", ".img", ".ext4"];

/// What the positional IMAGE names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A raw disk image (as `--image`).
    Disk(PathBuf),
    /// A root directory (as `--rootfs`).
    Dir(PathBuf),
    /// An image reference in full skopeo form (as `--oci`).
    Image(String),
}

/// Why IMAGE names nothing minivm can boot.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A path of that name exists, and it is also a reference.
    #[error(
        "{arg:?} is both an image reference and an existing {kind}: say which with \
         --oci {arg}, or --image/--rootfs ./{arg}"
    )]
    Ambiguous { arg: String, kind: &'static str },
    /// Written as a path, and not there.
    #[error("{arg}: no such file or directory")]
    Missing { arg: String },
    /// Neither a path nor a valid image name.
    #[error("{arg:?} is not a file, a directory or an image reference: {reason}")]
    Invalid { arg: String, reason: String },
}

/// Applies the rule in the module docs to `arg`.
pub fn resolve(arg: &str) -> Result<Target, TargetError> {
    resolve_in(arg, Path::new("."))
}

/// [`resolve`], with relative paths taken from `cwd`.
fn resolve_in(arg: &str, cwd: &Path) -> Result<Target, TargetError> {
    let path = Path::new(arg);
    let existing = std::fs::metadata(cwd.join(path)).ok();
    if TRANSPORTS.iter().any(|t| arg.starts_with(t)) {
        if let Some(m) = existing {
            let kind = if m.is_dir() { "directory" } else { "file" };
            return Err(TargetError::Ambiguous {
                arg: arg.to_string(),
                kind,
            });
        }
        return Ok(Target::Image(arg.to_string()));
    }
    match existing {
        Some(m) if m.is_dir() => return Ok(Target::Dir(path.to_path_buf())),
        Some(_) => return Ok(Target::Disk(path.to_path_buf())),
        None => {}
    }
    if looks_like_a_path(arg) {
        return Err(TargetError::Missing {
            arg: arg.to_string(),
        });
    }
    let full = format!("docker://{arg}");
    ImageRef::from_str(&full).map_err(|e| TargetError::Invalid {
        arg: arg.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Target::Image(full))
}

fn looks_like_a_path(arg: &str) -> bool {
    ["/", "./", "../", "~"].iter().any(|p| arg.starts_with(p))
        || arg == "."
        || arg == ".."
        || DISK_SUFFIXES.iter().any(|s| arg.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("minivm-target-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn existing_files_are_disks_and_directories_roots() {
        let d = scratch("exist");
        let disk = d.join("disk.raw");
        std::fs::write(&disk, b"").unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        assert_eq!(resolve(&s(&disk)).unwrap(), Target::Disk(disk.clone()));
        assert_eq!(resolve(&s(&d)).unwrap(), Target::Dir(d.clone()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn references_keep_their_transport_and_short_names_mean_a_registry() {
        assert_eq!(
            resolve("oci:/nonexistent/layout:1").unwrap(),
            Target::Image("oci:/nonexistent/layout:1".into())
        );
        assert_eq!(
            resolve("docker://localhost:5000/app").unwrap(),
            Target::Image("docker://localhost:5000/app".into())
        );
        for short in [
            "alpine",
            "alpine:3.20",
            "library/debian:12",
            "quay.io/x/y:1",
        ] {
            assert_eq!(
                resolve(short).unwrap(),
                Target::Image(format!("docker://{short}")),
                "{short}"
            );
        }
    }

    #[test]
    fn missing_paths_and_bad_names_are_errors() {
        for p in [
            "/nonexistent/disk",
            "./nope",
            "../nope",
            "nope.raw",
            "d.img",
        ] {
            let e = resolve(p).unwrap_err();
            assert!(matches!(e, TargetError::Missing { .. }), "{p}: {e}");
            assert!(e.to_string().contains("no such file"), "{e}");
        }
        let e = resolve("Upper:Case:Colons").unwrap_err();
        assert!(matches!(e, TargetError::Invalid { .. }), "{e}");
    }

    #[test]
    fn a_reference_that_is_also_a_path_is_ambiguous() {
        let d = scratch("ambiguous");
        let name = d.join("oci:layout");
        std::fs::write(&name, b"").unwrap();
        // Relative, as a user would type it, so the transport prefix leads.
        let e = resolve_in("oci:layout", &d).unwrap_err();
        assert!(
            matches!(e, TargetError::Ambiguous { kind: "file", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("--oci oci:layout"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
