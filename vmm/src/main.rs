//! minivm: boot a Linux VM from a raw disk image, a host directory or an OCI
//! image on KVM.
//!
//! `run` goes one way: the arguments are validated into a [`spec::RunSpec`],
//! its root is prepared ([`root::PreparedRoot`]: converted, unpacked, given a
//! writable layer), [`lifecycle::run`] boots the guest (again after each
//! reboot with `--restart`), [`vm::boot`] building and running each VM, and
//! the way the guest ended becomes minivm's exit status.

mod agent;
mod cli;
mod config;
mod control;
mod cpuid;
mod error;
mod exec;
mod images;
mod io_reason;
mod jail;
mod lifecycle;
mod machine;
mod paths;
mod phases;
mod reaper;
mod restore;
mod root;
mod running;
mod session;
mod shutdown;
mod signals;
mod snapshot;
mod spec;
mod streams;
mod target;
mod terminal;
mod upper;
mod usage;
mod vcpu;
mod vm;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use devices::ExitReason;

use cli::{Cli, Command};
use error::Error;
use root::PreparedRoot;
use sandbox::jail::Role;
use session::HostHandles;
use spec::RunSpec;

/// minivm itself failed.
const EXIT_ERROR: u8 = 1;
/// The command line is wrong (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;
/// The guest crashed (triple fault, kernel panic, unrunnable instruction).
const EXIT_GUEST_CRASH: u8 = 3;
/// `--timeout` passed (as GNU timeout's).
const EXIT_TIMEOUT: u8 = 124;

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn exit_code(reason: ExitReason) -> u8 {
    match reason {
        // Snapshot: saved (`--snapshot-to`), and the run ends there.
        ExitReason::Reset | ExitReason::PowerOff | ExitReason::UserQuit | ExitReason::Snapshot => 0,
        ExitReason::GuestExit(status) => status,
        ExitReason::GuestPanic | ExitReason::Crash => EXIT_GUEST_CRASH,
        ExitReason::HostSignal(sig) => 128u8.saturating_add(sig as u8),
        ExitReason::Timeout => EXIT_TIMEOUT,
    }
}

/// `--timings`: minivm's own share of a run, around the guest's.
fn timings(start: Instant, end: &lifecycle::RunEnd, now: Instant) -> String {
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    match (end.first_entry, end.last_exit) {
        (Some(entry), Some(exit)) => format!(
            "timings: start to guest entry {:.2} ms, guest {:.2} ms, guest exit to end {:.2} ms\n\
             minivm: by phase, each the time since the one before:\n{}",
            ms(start, entry),
            ms(entry, exit),
            ms(exit, now),
            phases::report(start, end.first_entry, end.last_exit).trim_end()
        ),
        _ => format!(
            "timings: the guest never ran; start to end {:.2} ms",
            ms(start, now)
        ),
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse_from(cli::with_implicit_run(std::env::args_os().collect()));
    init_logging(cli.verbose);
    match dispatch(cli.command, start) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("minivm: {e}");
            ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_ERROR })
        }
    }
}

fn dispatch(command: Command, start: Instant) -> Result<ExitCode, Error> {
    match command {
        Command::Run(args) => return run(&args, start),
        Command::Restore(args) => return restore(&args, start),
        Command::Exec(args) => return Ok(exec::client::run(&args)?),
        Command::Convert(a) => images::convert_cmd(&a.reference, &a.output, &a.image)?,
        Command::Pull(a) => images::pull_cmd(&a.reference, &a.image)?,
        Command::Images => images::images_cmd(),
        Command::Rm { targets } => images::rm_cmd(&targets)?,
        Command::Gc { unused_days, all } => images::gc_cmd(unused_days, all)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `minivm run`: validate, prepare the root, boot, map the guest's end to an exit status.
fn run(args: &cli::RunArgs, start: Instant) -> Result<ExitCode, Error> {
    let spec = RunSpec::from_args(args)?;
    devices::virtio::fs::raise_fd_limit();
    phases::mark("arguments checked");
    // Lives as long as the VM: dropping it removes a private writable layer.
    let mut root = PreparedRoot::prepare(&spec.root)?;
    phases::mark("root prepared");
    root.attach_agent(&spec)?;
    let mut config = root.vm_config(&spec);
    config.canonicalize_paths();
    phases::mark("agent and VM configuration");
    let host = HostHandles::open(&config)?;
    phases::mark("host handles opened");
    // Lives as long as the VM: dropping it removes a private writable layer.
    let root = match &spec.jail {
        None => Some(root),
        Some(j) => match sandbox::jail::enter(&jail::for_vm(j, &config))? {
            Role::Supervisor(child) => {
                tracing::info!("jailed VM process: pid {}", child.child());
                drop(host);
                let code = child.wait();
                // The writable layer is removed here, outside the jail.
                drop(root);
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR)));
            }
            // The supervisor owns the root's host resources (it removes the
            // writable layer); the jail closed the directory fds among them.
            Role::Jailed => {
                std::mem::forget(root);
                None
            }
        },
    };
    let end = lifecycle::run(&config, host, spec.restart, start)?;
    report_end(end.reason);
    // The writable layer goes before the end is timed.
    drop(root);
    phases::mark("root released");
    if args.timings {
        eprintln!("minivm: {}", timings(start, &end, Instant::now()));
    }
    Ok(ExitCode::from(exit_code(end.reason)))
}

fn report_end(reason: ExitReason) {
    match reason {
        ExitReason::GuestPanic => eprintln!("minivm: the guest kernel panicked"),
        ExitReason::HostSignal(s) => eprintln!("minivm: stopped by signal {s}"),
        ExitReason::Timeout => eprintln!("minivm: stopped: --timeout passed"),
        r => tracing::info!("guest ended: {r:?}"),
    }
}

/// `minivm restore`: check the snapshot, start the VM from it, run it to
/// its end like `run`.
fn restore(args: &cli::RestoreArgs, start: Instant) -> Result<ExitCode, Error> {
    let pvm = cpuid::is_pvm_host();
    let loaded = snapshot::load(&args.dir, pvm).map_err(vm::VmError::Snapshot)?;
    let config = restore::vm_config(args, loaded)?;
    let host = HostHandles::open(&config)?;
    let end = lifecycle::run(&config, host, false, start)?;
    report_end(end.reason);
    if args.timings {
        eprintln!("minivm: {}", timings(start, &end, Instant::now()));
    }
    Ok(ExitCode::from(exit_code(end.reason)))
}
