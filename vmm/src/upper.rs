//! The writable layer of a VM booted with `run --oci --virtiofs`.
//!
//! Every VM gets its own directory `<cache>/minivm/vms/<pid>.<n>/` holding
//! `upper/` (what the guest changes) and `lock`, a file the VM holds an
//! exclusive lock on while it runs. The directory is removed when the VM ends;
//! after a kill -9 the next VM start finds it unlocked and removes it (a lock,
//! unlike a pid, cannot be mistaken for a live VM's after pid reuse).
//! `--persist DIR` uses DIR as the upper directory instead and keeps it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A VM's upper directory, removed on drop unless it is persistent.
#[derive(Debug)]
pub struct VmUpper {
    upper: PathBuf,
    /// The private VM directory (None for `--persist`).
    private: Option<(PathBuf, File)>,
}

impl VmUpper {
    /// The upper directory to serve.
    pub fn path(&self) -> &Path {
        &self.upper
    }

    /// A fresh private upper directory under `vms_root`, made with the
    /// image root's attributes (see `imagefs::layerstore::prepare_upper`).
    pub fn private(vms_root: &Path, layers: &[PathBuf]) -> Result<VmUpper, String> {
        let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        std::fs::create_dir_all(vms_root).map_err(|e| err("create", vms_root, e))?;
        remove_stale(vms_root);
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = vms_root.join(format!(
            "{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a dead VM with our pid is stale by definition.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| err("remove stale", &dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| err("create", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(|e| err("create", &lock_path, e))?;
        lock.lock().map_err(|e| err("lock", &lock_path, e))?;
        let upper = dir.join("upper");
        let vm = VmUpper {
            upper: upper.clone(),
            private: Some((dir, lock)),
        };
        imagefs::layerstore::prepare_upper(layers, &upper)
            .map_err(|e| err("prepare the VM's writable layer", &upper, e))?;
        Ok(vm)
    }

    /// `dir` as a persistent upper directory (created like a private one the
    /// first time, used as it is afterwards).
    pub fn persistent(dir: &Path, layers: &[PathBuf]) -> Result<VmUpper, String> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                "--persist {}: not a directory (with --virtiofs it keeps the VM's writable layer)",
                dir.display()
            ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                imagefs::layerstore::prepare_upper(layers, dir)
                    .map_err(|e| format!("--persist {}: {e}", dir.display()))?;
            }
            Err(e) => return Err(format!("--persist {}: {e}", dir.display())),
        }
        Ok(VmUpper {
            upper: dir.to_path_buf(),
            private: None,
        })
    }
}

impl Drop for VmUpper {
    fn drop(&mut self) {
        if let Some((dir, _lock)) = self.private.take() {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!(
                    "could not remove the VM's writable layer {}: {e}",
                    dir.display()
                );
            }
        }
    }
}

/// Removes the directories of VMs that are gone (their lock is free).
fn remove_stale(vms_root: &Path) {
    let Ok(entries) = std::fs::read_dir(vms_root) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let stale = match File::open(dir.join("lock")) {
            Ok(f) => f.try_lock().is_ok(),
            // No lock file: a VM that died before creating it.
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if stale && dir.is_dir() {
            match remove_tree(&dir) {
                Ok(()) => tracing::info!("removed the leftover VM directory {}", dir.display()),
                Err(e) => tracing::warn!("could not remove {}: {e}", dir.display()),
            }
        }
    }
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
        // What a kill -9 leaves: an unlocked lock file, and one without any.
        for (name, lock) in [("99999999.0", true), ("99999999.1", false)] {
            let d = vms.join(name).join("upper/sub");
            std::fs::create_dir_all(&d).unwrap();
            if lock {
                File::create(vms.join(name).join("lock")).unwrap();
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
        let e = VmUpper::persistent(&file, &layers).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
