//! The writable layer of a VM booted with `run --oci --virtiofs`.
//!
//! Every VM gets its own work directory `<cache>/minivm/vms/vm.<pid>.<n>/`
//! (an [`imagefs::host::WorkDir`], locked while the VM runs) holding
//! `upper/`, what the guest changes. The directory is removed when the VM
//! ends; after a kill -9 the next VM start finds it unlocked and removes it (a
//! lock, unlike a pid, cannot be mistaken for a live VM's after pid reuse).
//! `--persist DIR` uses DIR as the upper directory instead and keeps it.

use std::io;
use std::path::{Path, PathBuf};

use imagefs::host::WorkDir;

/// Why the VM's writable layer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpperError {
    /// The VM's work directory could not be made.
    #[error("create {}: {source}", .path.display())]
    WorkDir { path: PathBuf, source: io::Error },
    /// The upper directory could not be given the image root's attributes.
    #[error("prepare the VM's writable layer {}: {source}", .path.display())]
    Prepare { path: PathBuf, source: io::Error },
    /// `--persist` names something other than a directory.
    #[error(
        "--persist {}: not a directory (with --virtiofs it keeps the VM's writable layer)",
        .0.display()
    )]
    PersistNotDir(PathBuf),
    /// `--persist` could not be read or created.
    #[error("--persist {}: {source}", .path.display())]
    Persist { path: PathBuf, source: io::Error },
}

/// A VM's upper directory, removed on drop unless it is persistent.
#[derive(Debug)]
pub struct VmUpper {
    upper: PathBuf,
    /// The private VM directory (None for `--persist`).
    private: Option<WorkDir>,
}

impl VmUpper {
    /// The upper directory to serve.
    pub fn path(&self) -> &Path {
        &self.upper
    }

    /// A fresh private upper directory under `vms_root`, made with the
    /// image root's attributes (see `imagefs::layerstore::prepare_upper`).
    pub fn private(vms_root: &Path, layers: &[PathBuf]) -> Result<VmUpper, UpperError> {
        remove_stale(vms_root);
        let dir = WorkDir::create(vms_root, "vm").map_err(|source| UpperError::WorkDir {
            path: vms_root.to_path_buf(),
            source,
        })?;
        let upper = dir.path().join("upper");
        let vm = VmUpper {
            upper: upper.clone(),
            private: Some(dir),
        };
        imagefs::layerstore::prepare_upper(layers, &upper).map_err(|source| {
            UpperError::Prepare {
                path: upper,
                source,
            }
        })?;
        Ok(vm)
    }

    /// `dir` as a persistent upper directory (created like a private one the
    /// first time, used as it is afterwards).
    pub fn persistent(dir: &Path, layers: &[PathBuf]) -> Result<VmUpper, UpperError> {
        let persist = |source| UpperError::Persist {
            path: dir.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(UpperError::PersistNotDir(dir.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                imagefs::layerstore::prepare_upper(layers, dir).map_err(persist)?;
            }
            Err(e) => return Err(persist(e)),
        }
        Ok(VmUpper {
            upper: dir.to_path_buf(),
            private: None,
        })
    }
}

impl Drop for VmUpper {
    fn drop(&mut self) {
        // Removed while still locked: no other VM start can take it for a leftover.
        if let Some(dir) = self.private.take() {
            if let Err(e) = remove_tree(dir.path()) {
                tracing::warn!(
                    "could not remove the VM's writable layer {}: {e}",
                    dir.path().display()
                );
            }
        }
    }
}

/// Removes the directories of VMs that are gone (their lock is free).
fn remove_stale(vms_root: &Path) {
    WorkDir::sweep_abandoned(vms_root, |dir| {
        let r = remove_tree(dir);
        match &r {
            Ok(()) => tracing::info!("removed the leftover VM directory {}", dir.display()),
            Err(e) => tracing::warn!("could not remove {}: {e}", dir.display()),
        }
        r
    });
}

/// `remove_dir_all`, after making directories the guest made unwritable
/// writable again (they belong to this user when not root).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if std::fs::remove_dir_all(dir).is_ok() {
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("minivm-upper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn private_uppers_are_separate_and_removed() {
        let root = scratch("private");
        let layer = root.join("layer");
        std::fs::create_dir(&layer).unwrap();
        let layers = vec![layer];
        let a = VmUpper::private(&root.join("vms"), &layers).unwrap();
        let b = VmUpper::private(&root.join("vms"), &layers).unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), b"x").unwrap();
        // A live VM's directory is not stale.
        remove_stale(&root.join("vms"));
        assert!(a.path().join("f").exists() && b.path().is_dir());
        let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
        drop(a);
        assert!(!pa.parent().unwrap().exists());
        assert!(pb.exists());
        drop(b);
        assert_eq!(std::fs::read_dir(root.join("vms")).unwrap().count(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn leftovers_of_killed_vms_are_removed_and_persist_is_kept() {
        let root = scratch("stale");
        let vms = root.join("vms");
        // What a kill -9 leaves: unlocked work directories (one with the
        // lock file older minivm versions made).
        for (name, lock) in [("vm.99999999.0", true), ("99999999.1", false)] {
            let d = vms.join(name).join("upper/sub");
            std::fs::create_dir_all(&d).unwrap();
            if lock {
                std::fs::File::create(vms.join(name).join("lock")).unwrap();
            }
        }
        let layers = vec![root.clone()];
        let live = VmUpper::private(&vms, &layers).unwrap();
        let left: Vec<_> = std::fs::read_dir(&vms).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        drop(live);

        let keep = root.join("keep");
        let p = VmUpper::persistent(&keep, &layers).unwrap();
        std::fs::write(p.path().join("state"), b"1").unwrap();
        drop(p);
        assert_eq!(std::fs::read(keep.join("state")).unwrap(), b"1");
        let p = VmUpper::persistent(&keep, &layers).unwrap();
        assert!(p.path().join("state").exists());
        let file = root.join("file");
        std::fs::write(&file, b"").unwrap();
        let e = VmUpper::persistent(&file, &layers).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
