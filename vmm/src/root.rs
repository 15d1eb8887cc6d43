//! Preparing the root a [`RootSpec`] names: converting or unpacking an OCI
//! image and making the VM's writable layer. What is prepared lives as long
//! as the [`PreparedRoot`]: dropping it removes a private writable layer.

use crate::config::{DiskConfig, ShareConfig, ShareSource, VmConfig, ROOTFS_TAG};
use crate::error::Error;
use crate::spec::{RootSpec, RunSpec, UpperSpec};
use crate::upper::VmUpper;
use crate::{images, paths};

/// The root, ready to attach: a disk or a virtio-fs share (or neither).
#[derive(Debug)]
pub struct PreparedRoot {
    disk: Option<DiskConfig>,
    share: Option<ShareConfig>,
    /// Owns the private writable layer for as long as the VM runs.
    _upper: Option<VmUpper>,
}

impl PreparedRoot {
    /// Converts, unpacks and creates what `spec` needs.
    pub fn prepare(spec: &RootSpec) -> Result<PreparedRoot, Error> {
        let mut upper = None;
        let (disk, share) = match spec {
            RootSpec::None => (None, None),
            RootSpec::Disk { path, read_only } => (
                Some(DiskConfig {
                    path: path.clone(),
                    read_only: *read_only,
                    copy_on_write: false,
                }),
                None,
            ),
            RootSpec::Dir {
                path,
                read_only,
                size_cap,
            } => (
                None,
                Some(ShareConfig {
                    source: ShareSource::Dir(path.clone()),
                    tag: ROOTFS_TAG.into(),
                    read_only: *read_only,
                    size_cap: *size_cap,
                }),
            ),
            RootSpec::OciDisk {
                image,
                persist,
                read_only,
            } => {
                let path = images::disk_for_run(&image.reference, persist.as_deref(), &image.opts)?;
                // The cached disk is shared by every VM: a writable VM gets a private view of it.
                let copy_on_write = persist.is_none() && !read_only;
                let disk = DiskConfig {
                    path,
                    read_only: *read_only,
                    copy_on_write,
                };
                (Some(disk), None)
            }
            RootSpec::OciLayers {
                image,
                upper: upper_spec,
                size_cap,
            } => {
                let layers = images::layers_for_run(&image.reference, &image.opts)?;
                upper = match upper_spec {
                    UpperSpec::None => None,
                    UpperSpec::Private => Some(VmUpper::private(&paths::vms_dir(), &layers)?),
                    UpperSpec::Persist(dir) => Some(VmUpper::persistent(dir, &layers)?),
                };
                let share = ShareConfig {
                    read_only: upper.is_none(),
                    source: ShareSource::Layers {
                        layers,
                        upper: upper.as_ref().map(|u| u.path().to_path_buf()),
                    },
                    tag: ROOTFS_TAG.into(),
                    size_cap: *size_cap,
                };
                (None, Some(share))
            }
        };
        Ok(PreparedRoot {
            disk,
            share,
            _upper: upper,
        })
    }

    /// The VM to build: `spec` with this root attached (its share first).
    pub fn vm_config(&self, spec: &RunSpec) -> VmConfig {
        VmConfig {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            disk: self.disk.clone(),
            shares: self.share.iter().chain(&spec.shares).cloned().collect(),
            nets: spec.nets.clone(),
            mem_size: spec.mem_size,
            cpus: spec.cpus,
            cmdline: spec.cmdline.clone(),
            rng: spec.rng,
            shutdown_timeout: spec.shutdown_timeout,
            fs_stats: spec.fs_stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn spec(root: RootSpec) -> RunSpec {
        RunSpec {
            root,
            kernel: "/bin/sh".into(),
            initrd: None,
            shares: vec![ShareConfig {
                source: ShareSource::Dir("/srv".into()),
                tag: "data".into(),
                read_only: true,
                size_cap: None,
            }],
            nets: vec![],
            mem_size: 64 << 20,
            cpus: 1,
            cmdline: "quiet".into(),
            rng: true,
            shutdown_timeout: std::time::Duration::ZERO,
            fs_stats: false,
            restart: false,
        }
    }

    #[test]
    fn the_root_share_comes_first() {
        let s = spec(RootSpec::Dir {
            path: "/tmp".into(),
            read_only: false,
            size_cap: Some(16 << 20),
        });
        let c = PreparedRoot::prepare(&s.root).unwrap().vm_config(&s);
        assert!(c.disk.is_none());
        let tags: Vec<_> = c.shares.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(tags, [ROOTFS_TAG, "data"]);
        let r = &c.shares[0];
        assert_eq!((r.read_only, r.size_cap), (false, Some(16 << 20)));
        assert!(matches!(&r.source, ShareSource::Dir(p) if p == Path::new("/tmp")));
    }

    #[test]
    fn a_disk_is_attached_as_given() {
        let s = spec(RootSpec::Disk {
            path: PathBuf::from("/d.raw"),
            read_only: true,
        });
        let c = PreparedRoot::prepare(&s.root).unwrap().vm_config(&s);
        let d = c.disk.unwrap();
        assert_eq!(
            (d.path.as_path(), d.read_only, d.copy_on_write),
            (Path::new("/d.raw"), true, false)
        );
        assert_eq!(c.shares.len(), 1);
    }
}
