//! Preparing the root a [`RootSpec`] names: converting or unpacking an OCI
//! image and making the VM's writable layer. What is prepared lives as long
//! as the [`PreparedRoot`]: dropping it removes a private writable layer.

use imagefs::process::ImageProcess;

use crate::agent::{AgentInitrd, AgentRoot, Job};
use crate::config::{
    DiskConfig, GuestIo, InitrdPart, ShareConfig, ShareSource, VmConfig, ROOTFS_TAG,
};
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
    /// What an OCI image says to run, when known.
    process: Option<ImageProcess>,
    /// The guest agent's initramfs, when the run has a command for it.
    agent: Option<AgentInitrd>,
    /// The agent waits for its job in a snapshot (`--snapshot-to`).
    waiting: bool,
    /// Its job for this run, sent once the VM is saved (`--snapshot-and-continue`).
    continue_job: Option<Job>,
}

impl PreparedRoot {
    /// Converts, unpacks and creates what `spec` needs.
    pub fn prepare(spec: &RootSpec) -> Result<PreparedRoot, Error> {
        let mut upper = None;
        let mut process = None;
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
                let (path, p) =
                    images::disk_for_run(&image.reference, persist.as_deref(), &image.opts)?;
                process = p;
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
                let (layers, p) = images::layers_for_run(&image.reference, &image.opts)?;
                process = Some(p);
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
            process,
            agent: None,
            waiting: false,
            continue_job: None,
        })
    }

    /// Puts the guest agent in charge when the run has a command for it:
    /// `-- CMD` or `--entrypoint`, or an image whose command is an
    /// application (not an init) when the user did not name an init.
    pub fn attach_agent(&mut self, spec: &RunSpec) -> Result<(), Error> {
        if spec.snapshot_to.is_some() && (self.disk.is_some() || self.share.is_some()) {
            // The snapshot's agent gets its command when it is restored.
            let root = self.agent_root()?;
            self.agent = Some(AgentInitrd::waiting(&root, spec.root.read_only())?);
            self.waiting = true;
            if spec.snapshot_continue {
                let image = self.process.clone().unwrap_or_default();
                self.continue_job = Some(Job::new(&image, &spec.overrides)?);
            }
            return Ok(());
        }
        let image = self.process.clone().unwrap_or_default();
        let names_init = spec.own_cmdline
            || spec
                .cmdline
                .split_whitespace()
                .any(|w| w.starts_with("init=") || w.starts_with("rdinit="));
        let application = !image.argv().is_empty() && image.init().is_none() && !names_init;
        if !spec.overrides.any() && !application {
            if spec.overrides.interactive || spec.overrides.tty {
                return Err(Error::AgentConflict(
                    "-i and -t are for a command (-- CMD, or an application image's own)",
                ));
            }
            if spec.exec_socket.is_some() {
                return Err(Error::AgentConflict(
                    "--exec-socket is for a command (-- CMD, or an application image's own): \
                     minivm's guest agent runs what `minivm exec` asks",
                ));
            }
            return Ok(());
        }
        if spec.initrd.is_some() {
            return Err(Error::AgentConflict(
                "--initrd cannot be used with a command for the guest agent (-- CMD)",
            ));
        }
        let root = self.agent_root()?;
        let mut job = Job::new(&image, &spec.overrides)?;
        job.exec = spec.exec_socket.is_some();
        tracing::info!("the guest agent runs {:?}", job.argv);
        self.agent = Some(AgentInitrd::new(&job, &root, spec.root.read_only())?);
        Ok(())
    }

    fn agent_root(&self) -> Result<AgentRoot, Error> {
        match (&self.disk, &self.share) {
            (Some(_), _) => Ok(AgentRoot::Disk),
            (None, Some(share)) => Ok(AgentRoot::Share(share.tag.clone())),
            (None, None) => Err(Error::AgentConflict(
                "a command (-- CMD) needs an image, a disk or a root directory to run in",
            )),
        }
    }

    /// The VM to build: `spec` with this root attached (its share first).
    pub fn vm_config(&self, spec: &RunSpec) -> VmConfig {
        VmConfig {
            kernel: spec.kernel.clone(),
            kernel_pages: boot::loader::Pages::Copied,
            initrd: match &self.agent {
                Some(a) => a.parts(),
                None => spec
                    .initrd
                    .iter()
                    .map(|p| InitrdPart {
                        path: p.clone(),
                        pages: boot::loader::Pages::Copied,
                    })
                    .collect(),
            },
            disk: self.disk.clone(),
            shares: self.share.iter().chain(&spec.shares).cloned().collect(),
            nets: spec.nets.clone(),
            mem_size: spec.mem_size,
            cpus: spec.cpus,
            cmdline: match &self.agent {
                // Kernel messages stay off the command's output (a panic's
                // still show), unless minivm is verbose (-v).
                Some(_) if !tracing::enabled!(tracing::Level::INFO) => {
                    format!("{} quiet loglevel=1", spec.cmdline)
                }
                Some(_) => spec.cmdline.clone(),
                None => image_init(&spec.cmdline, spec.own_cmdline, self.process.as_ref()),
            },
            rng: spec.rng,
            shutdown_timeout: spec.shutdown_timeout,
            timeout: spec.timeout,
            fs_stats: spec.fs_stats,
            seccomp: spec.seccomp,
            io: match &self.agent {
                Some(_) if spec.overrides.tty => GuestIo::Terminal {
                    stream_ports: false,
                },
                Some(_) => GuestIo::Streams {
                    stdin: spec.overrides.interactive,
                },
                None => GuestIo::Console,
            },
            exec_socket: spec.exec_socket.clone(),
            snapshot_to: spec.snapshot_to.clone(),
            restore: None,
            image_process: self
                .waiting
                .then(|| self.process.clone().unwrap_or_default()),
            snapshot_continue: spec.snapshot_continue,
            agent_job: self.continue_job.clone(),
        }
    }
}

/// The kernel command line, with `init=` from the image when its command is
/// a system init other than the kernel's default: unless the user wrote the
/// whole command line (`own`) or an `init=` of their own.
fn image_init(cmdline: &str, own: bool, process: Option<&ImageProcess>) -> String {
    let init = process.and_then(ImageProcess::init);
    match init {
        Some(init)
            if !own
                && init != KERNEL_DEFAULT_INIT
                && !cmdline.split_whitespace().any(|w| w.starts_with("init=")) =>
        {
            tracing::info!("the image's command is {init}: booting it as init");
            format!("{cmdline} init={init}")
        }
        _ => cmdline.to_string(),
    }
}

/// The first init the kernel tries.
const KERNEL_DEFAULT_INIT: &str = "/sbin/init";

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
            restart: false,
            timeout: None,
            own_cmdline: false,
            fs_stats: false,
            seccomp: crate::cli::SeccompMode::On,
            jail: None,
            snapshot_to: None,
            snapshot_continue: false,
            overrides: Default::default(),
            exec_socket: None,
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

    #[test]
    fn an_image_whose_command_is_an_init_boots_it() {
        let systemd = ImageProcess {
            cmd: vec!["/lib/systemd/systemd".into()],
            ..ImageProcess::default()
        };
        let sbin_init = ImageProcess {
            cmd: vec!["/sbin/init".into()],
            ..ImageProcess::default()
        };
        let app = ImageProcess {
            entrypoint: vec!["/bin/app".into()],
            ..ImageProcess::default()
        };
        let c = "console=ttyS0 rw";
        assert_eq!(
            image_init(c, false, Some(&systemd)),
            "console=ttyS0 rw init=/lib/systemd/systemd"
        );
        // The kernel's own default, an application, an unknown image, the
        // user's own command line or init= leave it alone.
        assert_eq!(image_init(c, false, Some(&sbin_init)), c);
        assert_eq!(image_init(c, false, Some(&app)), c);
        assert_eq!(image_init(c, false, None), c);
        assert_eq!(image_init(c, true, Some(&systemd)), c);
        let mine = "console=ttyS0 init=/bin/sh";
        assert_eq!(image_init(mine, false, Some(&systemd)), mine);
    }
}
