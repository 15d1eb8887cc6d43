//! `--jail`: what the jail holds for this VM and how tight its limits are
//! (the jail itself is `sandbox::jail`).

use sandbox::jail::{Bind, Jail, Limits};

use crate::config::VmConfig;
use crate::spec::JailSpec;

/// Address space beyond guest memory: the binary, thread stacks and
/// allocator arenas (glibc reserves 64 MiB of address space per arena,
/// about one per thread), measured at 170-370 MiB with 1-2 vCPUs.
const ADDRESS_SPACE_MARGIN: u64 = 1 << 30;
const ADDRESS_SPACE_PER_CPU: u64 = 64 << 20;

/// The jail of the VM `config` describes (its paths already canonical).
/// No `RLIMIT_NPROC`: it counts every process of the user host-wide (KVM's
/// worker threads too), so it would limit how many VMs a user can run, not
/// what one VM does; the seccomp filters already forbid new processes.
pub fn for_vm(spec: &JailSpec, config: &VmConfig) -> Jail {
    let binds = config
        .host_paths()
        .into_iter()
        .map(|(path, writable)| Bind { path, writable })
        .collect();
    let cpus = u64::from(config.cpus);
    Jail {
        dir: spec.dir.clone(),
        uid: spec.uid,
        gid: spec.gid,
        binds,
        limits: Limits {
            open_files: soft_nofile(),
            address_space: Some(
                config.mem_size + ADDRESS_SPACE_MARGIN + cpus * ADDRESS_SPACE_PER_CPU,
            ),
        },
        keep_file_caps: !config.shares.is_empty(),
    }
}

/// The open-file limit minivm runs with (raised to the hard limit at start).
fn soft_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    rl.rlim_cur
}
