//! What a container's OCI runtime spec (the bundle's `config.json`) asks
//! for, as a `minivm run` command line: the process (args, env, cwd, user,
//! terminal), the hostname, and the memory and CPU limits as the VM's size.
//! What a VM cannot give a container is refused here, before anything
//! starts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

/// The smallest VM the shim starts: a memory limit below it still gets
/// this much, as the guest kernel needs its share.
pub const MIN_MEM_MIB: u64 = 128;

/// Kernel file systems the guest agent mounts itself at these places; the
/// spec's own mounts of them are satisfied without a host path.
const AGENT_MOUNTS: &[(&str, &str)] = &[
    ("proc", "/proc"),
    ("sysfs", "/sys"),
    ("tmpfs", "/dev"),
    ("devpts", "/dev/pts"),
    ("tmpfs", "/dev/shm"),
    ("mqueue", "/dev/mqueue"),
    ("tmpfs", "/run"),
    ("tmpfs", "/tmp"),
    ("cgroup", "/sys/fs/cgroup"),
    ("cgroup2", "/sys/fs/cgroup"),
];

/// The VM's exec socket (`minivm run --exec-socket`), relative to the
/// bundle, where both minivm processes run: a bundle's absolute path can
/// pass the 108 bytes a socket's path may have.
pub const EXEC_SOCKET: &str = "minivm-exec.sock";

/// Errors reading or honouring a runtime spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json is missing or not a runtime spec.
    #[error("cannot read the runtime spec {path}: {source}")]
    Read {
        /// The bundle's config.json.
        path: PathBuf,
        /// What oci-spec said.
        source: oci_spec::OciSpecError,
    },
    /// The spec has no process, or one without args.
    #[error("the runtime spec has no process args to run")]
    NoProcess,
    /// An exec's process spec is not one.
    #[error("the exec's process spec: {0}")]
    ExecSpec(String),
    /// The spec asks for something a VM cannot give its container.
    #[error("minivm cannot give a container {0}")]
    Unsupported(String),
}

/// Reads the bundle's config.json.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|source| SpecError::Read { path, source })
}

/// The `minivm` arguments that run `spec`'s process in a VM whose root is
/// the directory `rootfs` (served over virtio-fs, writable), with minivm's
/// stdin attached when `stdin` and a terminal when the spec asks for one.
pub fn minivm_args(
    spec: &Spec,
    rootfs: &Path,
    stdin: bool,
    host_cpus: usize,
) -> Result<Vec<OsString>, SpecError> {
    check_supported(spec)?;
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let argv = process
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or(SpecError::NoProcess)?;
    let mut args: Vec<OsString> = vec!["run".into(), "--quiet".into(), rootfs.into()];
    let mut opt = |k: &str, v: String| {
        args.push(k.into());
        args.push(v.into());
    };
    if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        opt("--hostname", h.clone());
    }
    let (mem_mib, cpus) = vm_size(spec, host_cpus);
    opt("--mem", format!("{mem_mib}M"));
    opt("--cpus", cpus.to_string());
    opt("--exec-socket", EXEC_SOCKET.into());
    // A root directory has no image config: the args are the whole command.
    // (With a terminal, minivm run's stdin is the terminal's already.)
    let terminal = process.terminal().unwrap_or(false);
    process_args(&mut args, process, argv, stdin && !terminal);
    Ok(args)
}

/// The `minivm exec` arguments that run an exec's process (`spec`, a
/// runtime spec's process as JSON) in the container's VM.
pub fn exec_args(spec: &[u8], stdin: bool) -> Result<Vec<OsString>, SpecError> {
    let process: Process =
        serde_json::from_slice(spec).map_err(|e| SpecError::ExecSpec(e.to_string()))?;
    let argv = process
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or(SpecError::NoProcess)?;
    let mut args: Vec<OsString> = vec!["exec".into(), EXEC_SOCKET.into()];
    process_args(&mut args, &process, argv, stdin);
    Ok(args)
}

/// `process`'s env, cwd, user and terminal as options, then `-- argv`.
fn process_args(args: &mut Vec<OsString>, process: &Process, argv: &[String], stdin: bool) {
    let mut opt = |k: &str, v: String| {
        args.push(k.into());
        args.push(v.into());
    };
    for e in process.env().iter().flatten() {
        opt("-e", e.clone());
    }
    opt("--workdir", process.cwd().display().to_string());
    let user = process.user();
    opt("--user", format!("{}:{}", user.uid(), user.gid()));
    if process.terminal().unwrap_or(false) {
        args.push("-t".into());
    }
    if stdin {
        args.push("-i".into());
    }
    args.push("--".into());
    args.extend(argv.iter().map(OsString::from));
}

/// Memory (MiB) and vCPUs from the spec's limits: the memory limit rounded
/// up to MiB (at least [`MIN_MEM_MIB`]; none: minivm's default 512), the
/// CPU quota over its period rounded up (none: 1), at most `host_cpus`.
fn vm_size(spec: &Spec, host_cpus: usize) -> (u64, usize) {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let mem = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20).max(MIN_MEM_MIB))
        .unwrap_or(512);
    let cpus = resources
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p) as usize),
            _ => None,
        })
        .unwrap_or(1);
    (mem, cpus.clamp(1, host_cpus.max(1)))
}

/// Refuses what a VM cannot give: the host's (or another container's)
/// network namespace, host devices, host paths mounted in.
fn check_supported(spec: &Spec) -> Result<(), SpecError> {
    let unsupported = |what: String| Err(SpecError::Unsupported(what));
    if let Some(linux) = spec.linux() {
        let namespaces = linux.namespaces().as_deref().unwrap_or_default();
        match namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
        {
            None => {
                return unsupported(
                    "the host's network (the VM has its own; drop --net-host)".into(),
                )
            }
            Some(n) => {
                if let Some(path) = n.path() {
                    return unsupported(format!(
                        "the network namespace {} (pod sandboxes shared by several \
                         containers are not supported)",
                        path.display()
                    ));
                }
            }
        }
        if let Some(d) = linux.devices().as_deref().and_then(|d| d.first()) {
            return unsupported(format!("the host device {}", d.path().display()));
        }
    }
    for m in spec.mounts().iter().flatten() {
        let typ = m.typ().as_deref().unwrap_or("");
        let dest = m.destination().to_str().unwrap_or("");
        if !AGENT_MOUNTS.contains(&(typ, dest)) {
            return unsupported(format!(
                "the {typ} mount on {dest} (only the standard /proc, /sys, /dev, /run and \
                 /tmp file systems, which the VM has of its own)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec like `ctr run`'s default, with `extra` merged into it.
    fn spec(extra: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 1000, "gid": 100},
                "args": ["sh", "-c", "echo hi"],
                "env": ["PATH=/bin", "A=b c"],
                "cwd": "/srv"
            },
            "root": {"path": "rootfs"},
            "hostname": "box",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs"}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]
            }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn args(s: &Spec, stdin: bool) -> Vec<String> {
        minivm_args(s, Path::new("/b/rootfs"), stdin, 2)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn the_process_becomes_the_agent_s_command() {
        assert_eq!(
            args(&spec(serde_json::json!({})), false).join(" "),
            "run --quiet /b/rootfs --hostname box --mem 512M --cpus 1 \
             --exec-socket minivm-exec.sock -e PATH=/bin -e A=b c \
             --workdir /srv --user 1000:100 -- sh -c echo hi"
        );
        let with_stdin = args(&spec(serde_json::json!({})), true);
        assert!(with_stdin.contains(&"-i".to_string()));
        let tty = args(
            &spec(serde_json::json!({"process": {"terminal": true}})),
            true,
        );
        assert!(tty.contains(&"-t".to_string()) && !tty.contains(&"-i".to_string()));
    }

    #[test]
    fn an_exec_s_process_becomes_minivm_exec() {
        let process = serde_json::json!({
            "args": ["sh", "-c", "id"], "env": ["PATH=/bin"], "cwd": "/tmp",
            "user": {"uid": 5, "gid": 6}, "terminal": true
        });
        let a = exec_args(process.to_string().as_bytes(), true).unwrap();
        let a: Vec<String> = a.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            a.join(" "),
            "exec minivm-exec.sock -e PATH=/bin --workdir /tmp --user 5:6 -t -i -- sh -c id"
        );
        let no_args = serde_json::json!({"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}});
        let e = exec_args(no_args.to_string().as_bytes(), false).unwrap_err();
        assert!(e.to_string().contains("no process args"), "{e}");
        let e = exec_args(b"{not json", false).unwrap_err();
        assert!(e.to_string().contains("the exec's process spec"), "{e}");
    }

    #[test]
    fn limits_size_the_vm() {
        let s = spec(serde_json::json!({"linux": {"resources": {
            "memory": {"limit": 300 * 1024 * 1024 + 1},
            "cpu": {"quota": 150000, "period": 100000}
        }}}));
        let a = args(&s, false).join(" ");
        assert!(a.contains("--mem 301M --cpus 2"), "{a}");
        // Tiny limits still get a bootable VM; CPUs stop at the host's.
        let s = spec(serde_json::json!({"linux": {"resources": {
            "memory": {"limit": 1 << 20},
            "cpu": {"quota": 800000, "period": 100000}
        }}}));
        let a = args(&s, false).join(" ");
        assert!(a.contains("--mem 128M --cpus 2"), "{a}");
    }

    #[test]
    fn what_a_vm_cannot_give_is_refused() {
        let refused = |extra: serde_json::Value, want: &str| {
            let e = minivm_args(&spec(extra), Path::new("/r"), false, 2)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        };
        refused(
            serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}),
            "the host's network",
        );
        refused(
            serde_json::json!({"linux": {"namespaces": [
                {"type": "network", "path": "/var/run/netns/pod"}]}}),
            "/var/run/netns/pod",
        );
        refused(
            serde_json::json!({"linux": {"devices": [
                {"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232}]}}),
            "the host device /dev/kvm",
        );
        refused(
            serde_json::json!({"mounts": [
                {"destination": "/data", "type": "bind", "source": "/home"}]}),
            "the bind mount on /data",
        );
        refused(
            serde_json::json!({"process": {"args": []}}),
            "no process args",
        );
    }
}
