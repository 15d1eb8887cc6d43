//! minivm: boot a Linux VM from a raw disk image on KVM.

mod cli;
mod config;
mod cpuid;
mod images;
mod terminal;
mod upper;
mod vcpu;
mod vm;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use devices::ExitReason;

use cli::{Cli, Command};

/// minivm itself failed.
const EXIT_ERROR: u8 = 1;
/// The guest crashed (triple fault, kernel panic, unrunnable instruction).
const EXIT_GUEST_CRASH: u8 = 3;

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
        ExitReason::Reset | ExitReason::PowerOff | ExitReason::UserQuit => 0,
        ExitReason::GuestExit(status) => status,
        ExitReason::GuestPanic | ExitReason::Crash => EXIT_GUEST_CRASH,
        ExitReason::HostSignal(sig) => 128u8.saturating_add(sig as u8),
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => return run(&args, start),
        Command::Convert(a) => images::convert_cmd(&a.reference, &a.output, &a.image),
        Command::Pull(a) => images::pull_cmd(&a.reference, &a.image),
        Command::Images => {
            images::images_cmd();
            Ok(())
        }
        Command::Rm { targets } => images::rm_cmd(&targets),
        Command::Gc { unused_days, all } => images::gc_cmd(unused_days, all),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minivm: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(args: &cli::RunArgs, start: Instant) -> ExitCode {
    // A missing kernel is reported before a possibly long image conversion.
    if let Err(e) = config::resolve_kernel(args.kernel.as_deref()) {
        eprintln!("minivm: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    // Lives as long as the VM: dropping it removes a private writable layer.
    let mut upper = None;
    let oci = match &args.oci {
        Some(r) => match oci_root(r, args, &mut upper) {
            Ok(root) => Some(root),
            Err(e) => {
                eprintln!("minivm: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        },
        None => None,
    };
    let config = match config::VmConfig::from_args(args, oci) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("minivm: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match vm::run(&config, start) {
        Ok(reason) => {
            match reason {
                ExitReason::GuestPanic => eprintln!("minivm: the guest kernel panicked"),
                ExitReason::HostSignal(s) => eprintln!("minivm: stopped by signal {s}"),
                r => tracing::info!("guest ended: {r:?}"),
            }
            ExitCode::from(exit_code(reason))
        }
        Err(e) => {
            eprintln!("minivm: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// What `run --oci` boots: the converted disk, or the unpacked layers and the
/// VM's writable layer (kept alive in `upper`) for `--virtiofs`.
fn oci_root(
    reference: &str,
    args: &cli::RunArgs,
    upper: &mut Option<upper::VmUpper>,
) -> Result<config::OciRoot, String> {
    if !args.virtiofs {
        let disk = images::disk_for_run(reference, args.persist.as_deref(), &args.image_opts)?;
        return Ok(config::OciRoot::Disk(disk));
    }
    let layers = images::layers_for_run(reference, &args.image_opts)?;
    if !args.readonly {
        let u = match &args.persist {
            Some(dir) => upper::VmUpper::persistent(dir, &layers)?,
            None => upper::VmUpper::private(&imagefs::cache::default_root().join("vms"), &layers)?,
        };
        *upper = Some(u);
    }
    Ok(config::OciRoot::Layers {
        layers,
        upper: upper.as_ref().map(|u| u.path().to_path_buf()),
    })
}
