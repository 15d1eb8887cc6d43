//! `fsdrive`: what a virtio-fs server costs per request, without a guest.
//!
//! On a nested host the guest kernel is emulated, so a guest-driven file
//! benchmark is dominated by guest time and the servers' CPU sits near the
//! sampler's resolution. This driver plays the requests a guest's Linux
//! FUSE client sends for each job (bench/fs.sh's jobs and more) straight
//! into the virtqueues, one at a time as a single guest process makes them,
//! to minivm's virtio-fs device (in this process, its worker thread under
//! its seccomp filter as in a VM) and to virtiofsd (its own process, over
//! vhost-user as QEMU connects it). Both servers get the same jobs, asked
//! the same way (the number of requests differs only where a reply shapes
//! the next request, e.g. how many entries one READDIRPLUS holds), so the
//! CPU each spends for them compares the servers alone. Rounds are
//! interleaved (minivm, virtiofsd, then the other order), each job on a
//! fresh server; medians and ranges are printed with ratios.

mod client;
mod jobs;
mod ring;
mod servers;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use devices::GuestMemory;
use sandbox::seccomp::{Denied, MainNeeds, Policy, ThreadKind};
use vm_memory::{FileOffset, GuestAddress};

use crate::client::{Client, MEM_SIZE};
use crate::jobs::{Job, Sizes, SEQ_FILE};
use crate::servers::{Minivm, Server, Virtiofsd};

/// What went wrong driving a server.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("/proc: {0}")]
    Proc(String),
    #[error("minivm's virtio-fs device: {0}")]
    Minivm(String),
    #[error("vhost-user {0}: {1}")]
    VhostUser(&'static str, String),
    #[error("FUSE protocol: {0}")]
    Protocol(String),
    #[error("{op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Errno { op: &'static str, errno: i32 },
}

impl DriveError {
    fn io(what: &str, source: std::io::Error) -> DriveError {
        DriveError::Io {
            what: what.to_string(),
            source,
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    about = "Plays a guest's FUSE requests to minivm's virtio-fs server and to virtiofsd; prints each server's CPU"
)]
struct Args {
    /// Directory the walk and tar jobs read (shared read-only).
    #[arg(long)]
    tree: PathBuf,
    /// Empty-able directory the storm and sequential jobs write in (shared writable).
    #[arg(long)]
    scratch: PathBuf,
    /// virtiofsd binary (default: /usr/libexec/virtiofsd, else /usr/lib/qemu/virtiofsd).
    #[arg(long)]
    virtiofsd: Option<PathBuf>,
    /// Interleaved rounds (each job once per server per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Jobs to run, comma-separated: walk, tar, storm, seqread, seqwrite.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "walk,tar,storm,seqread,seqwrite"
    )]
    jobs: Vec<String>,
    /// Files the storm job creates, writes and removes.
    #[arg(long, default_value_t = 2000)]
    storm_files: usize,
    /// MiB the sequential jobs read and write.
    #[arg(long, default_value_t = 256)]
    seq_mib: u64,
    /// Run minivm's server without its seccomp filter (to see what the filter costs).
    #[arg(long)]
    no_seccomp: bool,
    /// Only minivm (no virtiofsd).
    #[arg(long)]
    minivm_only: bool,
    /// Let the scheduler place the driver and the server (by default the
    /// driver runs on CPU 0 and the server on CPU 1, as a busy vCPU thread
    /// and a device thread would; where they land otherwise changes the
    /// wake-up costs more than the servers differ).
    #[arg(long)]
    no_pin: bool,
}

/// One measured run of a job.
struct Sample {
    cpu: Duration,
    wall: Duration,
    requests: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match drive(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fsdrive: {e}");
            ExitCode::FAILURE
        }
    }
}

fn drive(args: &Args) -> Result<(), DriveError> {
    let jobs = parse_jobs(&args.jobs)?;
    if args.rounds == 0 {
        return Err(DriveError::Protocol("--rounds must be at least 1".into()));
    }
    let sizes = Sizes {
        storm_files: args.storm_files,
        seq_bytes: args.seq_mib << 20,
    };
    let vfsd = if args.minivm_only {
        None
    } else {
        Some(find_virtiofsd(args.virtiofsd.as_deref())?)
    };
    // As minivm does at start (the file server's fd budget follows it).
    devices::virtio::fs::raise_fd_limit();
    let policy = if args.no_seccomp {
        Policy::off()
    } else {
        Policy::new(MainNeeds::default(), Denied::Stop)
            .map_err(|e| DriveError::Minivm(e.to_string()))?
    };
    let server_cpu = placement(args.no_pin)?;
    let (mem, memfd) = guest_memory()?;
    if jobs.contains(&Job::SeqRead) {
        make_seq_file(&args.scratch.join(SEQ_FILE), sizes.seq_bytes)?;
    }
    let work = std::env::temp_dir().join(format!("fsdrive-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| DriveError::io(&work.display().to_string(), e))?;

    let start = |server: &str, job: Job| -> Result<Client, DriveError> {
        let (dir, read_only) = if job.on_tree() {
            (args.tree.as_path(), true)
        } else {
            (args.scratch.as_path(), false)
        };
        let rings = Client::rings(&mem)?;
        let s: Box<dyn Server> = match server {
            "minivm" => Box::new(Minivm::start(
                dir,
                read_only,
                &mem,
                &rings,
                policy.filter(ThreadKind::FsWorker),
                server_cpu,
            )?),
            _ => Box::new(Virtiofsd::start(
                vfsd.as_deref().expect("virtiofsd found"),
                dir,
                &mem,
                &memfd,
                &rings,
                &work,
                server_cpu,
            )?),
        };
        let c = Client::new(mem.clone(), rings, s)?;
        c.fill_write_data()?;
        Ok(c)
    };
    let measure = |server: &str,
                   job: Job|
     -> Result<(Sample, BTreeMap<&'static str, u64>, jobs::Seen), DriveError> {
        let mut c = start(server, job)?;
        let cpu0 = c.server_cpu()?;
        let t0 = Instant::now();
        let seen = jobs::run(&mut c, job, sizes)?;
        let wall = t0.elapsed();
        let cpu = c.server_cpu()?.saturating_sub(cpu0);
        let requests = c.sent.values().sum();
        Ok((
            Sample {
                cpu,
                wall,
                requests,
            },
            c.sent.clone(),
            seen,
        ))
    };

    let servers: Vec<&str> = if vfsd.is_some() {
        vec!["minivm", "virtiofsd"]
    } else {
        vec!["minivm"]
    };
    // Warm the host's caches, and check that every job works and that both
    // servers showed the same tree, before measuring.
    let mut opcodes = BTreeMap::new();
    for &job in &jobs {
        let mut first: Option<(&str, u64, u64)> = None;
        for &s in &servers {
            let (sample, sent, seen) = measure(s, job)?;
            eprintln!(
                "fsdrive: warm-up {:<9} {:<9} {:>7} requests, {:>6} entries, {:>6.1} MiB, {:>8.1} ms",
                job.name(),
                s,
                sample.requests,
                seen.entries,
                seen.bytes as f64 / (1 << 20) as f64,
                ms(sample.wall)
            );
            opcodes.insert((job, s), sent);
            match first {
                None => first = Some((s, seen.entries, seen.bytes)),
                Some((f, entries, bytes)) if (entries, bytes) != (seen.entries, seen.bytes) => {
                    return Err(DriveError::Protocol(format!(
                        "{}: {f} showed {entries} entries and {bytes} bytes, {s} {} and {}",
                        job.name(),
                        seen.entries,
                        seen.bytes
                    )));
                }
                Some(_) => {}
            }
        }
    }
    let mut samples: BTreeMap<(Job, &str), Vec<Sample>> = BTreeMap::new();
    for round in 0..args.rounds {
        for &job in &jobs {
            let mut order = servers.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for s in order {
                let (sample, _, _) = measure(s, job)?;
                samples.entry((job, s)).or_default().push(sample);
            }
        }
        eprintln!("fsdrive: round {} of {} done", round + 1, args.rounds);
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_file(args.scratch.join(SEQ_FILE));
    report(&jobs, &servers, &mut samples, &opcodes, args);
    Ok(())
}

/// Pins the driver to the first CPU this process may use and returns the
/// second, for the server; None with `no_pin` or a single CPU.
fn placement(no_pin: bool) -> Result<Option<usize>, DriveError> {
    if no_pin {
        return Ok(None);
    }
    // SAFETY: a zeroed cpu_set_t is valid for sched_getaffinity to fill.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(DriveError::io(
            "sched_getaffinity",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: CPU_ISSET reads within `set` for every index below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    match cpus[..] {
        [driver, server, ..] => {
            servers::pin(0, driver)?;
            eprintln!("fsdrive: driver on CPU {driver}, servers on CPU {server}");
            Ok(Some(server))
        }
        _ => {
            eprintln!("fsdrive: one CPU: driver and server share it");
            Ok(None)
        }
    }
}

fn parse_jobs(names: &[String]) -> Result<Vec<Job>, DriveError> {
    let mut jobs = Vec::new();
    for n in names {
        let job = Job::ALL
            .into_iter()
            .find(|j| j.name() == n.trim())
            .ok_or_else(|| {
                DriveError::Protocol(format!(
                    "unknown job '{n}' (walk, tar, storm, seqread, seqwrite)"
                ))
            })?;
        if !jobs.contains(&job) {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

fn find_virtiofsd(given: Option<&Path>) -> Result<PathBuf, DriveError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            DriveError::io(
                "virtiofsd",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither /usr/libexec/virtiofsd nor /usr/lib/qemu/virtiofsd (or pass --minivm-only)",
                ),
            )
        })
}

/// Guest memory in a memfd, so virtiofsd can map it too.
fn guest_memory() -> Result<(Arc<GuestMemory>, File), DriveError> {
    // SAFETY: the name is a NUL-terminated literal; the fd returned is owned below.
    let fd = unsafe { libc::memfd_create(c"fsdrive-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(DriveError::io(
            "memfd_create",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64)
        .map_err(|e| DriveError::io("memfd", e))?;
    let shared = file.try_clone().map_err(|e| DriveError::io("memfd", e))?;
    let mem = GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(shared, 0)),
    )])
    .map_err(|e| DriveError::Memory(e.to_string()))?;
    Ok((Arc::new(mem), file))
}

/// The sequential read job's file, written once (not measured).
fn make_seq_file(path: &Path, bytes: u64) -> Result<(), DriveError> {
    let err = |e| DriveError::io(&path.display().to_string(), e);
    if std::fs::metadata(path).is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    let mut f = File::create(path).map_err(err)?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 253) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(err)?;
        left -= n as u64;
    }
    f.sync_all().map_err(err)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and range of `v` (sorted here).
fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn report<'a>(
    jobs: &[Job],
    servers: &[&'a str],
    samples: &mut BTreeMap<(Job, &'a str), Vec<Sample>>,
    opcodes: &BTreeMap<(Job, &'a str), BTreeMap<&'static str, u64>>,
    args: &Args,
) {
    println!(
        "fsdrive: each job's requests as a guest's FUSE client makes them, one at a time; {} \
         interleaved rounds; server CPU = user + system time of {} (10 ms ticks), median [min-max]",
        args.rounds,
        if servers.len() > 1 {
            "minivm's virtio-fs worker thread / virtiofsd's processes"
        } else {
            "minivm's virtio-fs worker thread"
        }
    );
    let mut header = "| job |".to_string();
    for s in servers {
        header += &format!(" {s} requests | {s} CPU ms | {s} us/request |");
    }
    if servers.len() > 1 {
        header += " CPU ratio minivm/virtiofsd | requests ratio | wall ms minivm / virtiofsd |";
    }
    println!("{header}");
    println!("{}", "|---".repeat(header.matches('|').count() - 1) + "|");
    let mut totals = vec![0.0; servers.len()];
    let mut total_requests = vec![0u64; servers.len()];
    for &job in jobs {
        let mut line = format!("| {} |", job.name());
        let mut medians = Vec::new();
        let mut walls = Vec::new();
        let mut requests = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            let v = samples.get_mut(&(job, *s)).expect("sampled");
            // Every run of a job asks the same of a server; the first stands for all.
            let n = v[0].requests;
            let mut cpu: Vec<f64> = v.iter().map(|x| ms(x.cpu)).collect();
            let mut wall: Vec<f64> = v.iter().map(|x| ms(x.wall)).collect();
            let (m, lo, hi) = stats(&mut cpu);
            line += &format!(
                " {n} | {m:.0} [{lo:.0}-{hi:.0}] | {:.1} |",
                m * 1000.0 / n.max(1) as f64
            );
            medians.push(m);
            walls.push(stats(&mut wall).0);
            requests.push(n);
            totals[i] += m;
            total_requests[i] += n;
        }
        if servers.len() > 1 {
            line += &format!(
                " **{}** | {} | {:.0} / {:.0} |",
                ratio(medians[0], medians[1]),
                ratio(requests[0] as f64, requests[1] as f64),
                walls[0],
                walls[1]
            );
        }
        println!("{line}");
    }
    if servers.len() > 1 {
        println!(
            "| all jobs | {} | {:.0} | | {} | {:.0} | | **{}** | {} | |",
            total_requests[0],
            totals[0],
            total_requests[1],
            totals[1],
            ratio(totals[0], totals[1]),
            ratio(total_requests[0] as f64, total_requests[1] as f64)
        );
    }
    println!("requests by opcode:");
    for ((job, server), ops) in opcodes {
        let list: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  {} {}: {}", job.name(), server, list.join(", "));
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.3}", a / b)
    } else {
        "n/a".into()
    }
}
