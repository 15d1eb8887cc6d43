//! `minivm restore DIR [-- CMD]`: the VM a snapshot describes, set up as
//! the saved one was (same devices in the same slots) around this run's
//! host ends: the saved disk behind a private copy-on-write layer, this
//! minivm's stdin, stdout and stderr on the agent's ports (or with -t its
//! terminal on the serial console), and the job for the agent that waits in
//! the snapshot.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Job, Overrides};
use crate::cli::RestoreArgs;
use crate::config::{DiskConfig, GuestIo, VmConfig};
use crate::error::Error;
use crate::snapshot::Loaded;

/// The VM to start from `loaded`, with `args`' command for its agent.
pub fn vm_config(args: &RestoreArgs, loaded: Loaded) -> Result<VmConfig, Error> {
    let mut overrides = Overrides::from(&args.job);
    let (io, agent_job) = match &loaded.snapshot.agent {
        Some(agent) => {
            if overrides.hostname.is_none() {
                overrides.hostname = Some(crate::agent::fresh_hostname()?);
            }
            let job = Job::new(&agent.process, &overrides)?;
            tracing::info!("the restored agent runs {:?}", job.argv);
            // The saved agent has the stream ports open: they stay, and
            // with -t go unused.
            let io = if overrides.tty {
                GuestIo::Terminal { stream_ports: true }
            } else {
                GuestIo::Streams {
                    stdin: overrides.interactive,
                }
            };
            (io, Some(job))
        }
        None if overrides.any() || overrides.interactive || overrides.tty => {
            return Err(Error::AgentConflict(
                "restore: this snapshot has no guest agent to run a command (it was made \
                 without a root image)",
            ))
        }
        None => (GuestIo::Console, None),
    };
    let disk = loaded.snapshot.disk.as_ref().map(|d| DiskConfig {
        path: loaded.dir.join(crate::snapshot::DISK_FILE),
        read_only: d.read_only,
        copy_on_write: !d.read_only,
    });
    Ok(VmConfig {
        kernel: std::path::PathBuf::new(),
        kernel_pages: boot::loader::Pages::Copied,
        initrd: Vec::new(),
        disk,
        shares: Vec::new(),
        nets: Vec::new(),
        mem_size: loaded.snapshot.mem_size,
        cpus: u8::try_from(loaded.snapshot.vcpus.len()).unwrap_or(u8::MAX),
        cmdline: String::new(),
        rng: loaded.snapshot.rng,
        shutdown_timeout: Duration::ZERO,
        timeout: args.timeout.map(Duration::from_secs),
        fs_stats: false,
        seccomp: args.seccomp,
        io,
        exec_socket: None,
        snapshot_to: None,
        restore: Some(Arc::new(loaded)),
        image_process: None,
        snapshot_continue: false,
        agent_job,
    })
}
