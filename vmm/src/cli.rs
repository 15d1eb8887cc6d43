//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// minivm: a small, fast, secure KVM virtual machine monitor.
///
/// minivm boots a Linux kernel directly (no bootloader, no firmware) with a
/// raw disk image as its root filesystem and the guest's serial console on
/// your terminal.
#[derive(Debug, Parser)]
#[command(
    name = "minivm",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a virtual machine.
    #[command(after_long_help = RUN_HELP)]
    Run(RunArgs),
}

const RUN_HELP: &str = "\
EXAMPLES:
  minivm run --image debian.raw                  boot a raw ext4 disk with the default kernel
  minivm run --image disk.raw --readonly --append 'init=/bin/sh'
  minivm run --kernel ./vmlinux --mem 1G --image disk.raw

CONSOLE:
  The guest's serial console (ttyS0) is this terminal. When stdin is a terminal it is put
  in raw mode (restored on exit); press Ctrl-A then x to quit, Ctrl-A Ctrl-A to send Ctrl-A.

EXIT STATUS:
  0      the guest rebooted or powered off, or you quit with Ctrl-A x
  N      the guest wrote N to the exit port (I/O port 0xf4), e.g. from a shell:
         printf '\\007' | dd of=/dev/port bs=1 seek=244 count=1     (exits 7)
  1      minivm failed (bad arguments, missing files, KVM errors)
  2      command-line usage error
  3      the guest crashed: triple fault, kernel panic, or an instruction KVM cannot run
  128+S  minivm was stopped by signal S

  A write to port 0xf5 logs \"boot finished\" with the time since minivm started.

KERNEL:
  Without --kernel, minivm boots the kernel built by kernel/build.sh, found under
  ${XDG_CACHE_HOME:-~/.cache}/minivm/kernel/default/ (vmlinux preferred over bzImage).
";

/// Options of `minivm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Raw disk image attached as the first virtio-blk disk (/dev/vda) and used as root.
    #[arg(long, value_name = "DISK.raw")]
    pub image: Option<PathBuf>,

    /// Kernel to boot: an uncompressed ELF vmlinux (fastest) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk loaded next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Replace the whole default kernel command line.
    #[arg(long, value_name = "STR", conflicts_with = "append")]
    pub cmdline: Option<String>,

    /// Add to the default kernel command line.
    #[arg(long, value_name = "STR")]
    pub append: Option<String>,

    /// Guest memory, e.g. 512M, 2G, 1536 (MiB when no unit is given).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_mem_size)]
    pub mem: u64,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=1))]
    pub cpus: u8,

    /// Attach the disk read-only: guest writes fail and the file is never modified.
    #[arg(long)]
    pub readonly: bool,
}

/// Smallest guest memory accepted.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest guest memory accepted.
pub const MAX_MEM: u64 = 1 << 40;

/// Parses sizes like `512M`, `2G`, `2GiB`, `1048576K`; a bare number is MiB.
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size: expected a number with an optional unit (K, M, G, T)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is too large"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" => default_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("'{s}': unknown unit '{u}' (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_mem_size(s: &str) -> Result<u64, String> {
    let v = parse_size(s, 1 << 20)?;
    if v < MIN_MEM {
        return Err(format!(
            "'{s}' is too little memory: at least {} MiB",
            MIN_MEM >> 20
        ));
    }
    if v > MAX_MEM {
        return Err(format!(
            "'{s}' is too much memory: at most {} GiB",
            MAX_MEM >> 30
        ));
    }
    if v % 4096 != 0 {
        return Err(format!("'{s}' is not a multiple of 4 KiB"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_mem_size("512M"), Ok(512 << 20));
        assert_eq!(parse_mem_size("512"), Ok(512 << 20));
        assert_eq!(parse_mem_size("2G"), Ok(2 << 30));
        assert_eq!(parse_mem_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_mem_size("65536k"), Ok(64 << 20));
        assert!(parse_mem_size("1M").unwrap_err().contains("too little"));
        assert!(parse_mem_size("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_mem_size("M").unwrap_err().contains("not a size"));
        assert!(parse_mem_size("-5M").unwrap_err().contains("not a size"));
        assert!(parse_mem_size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_mem_size("4T").unwrap_err().contains("too much"));
        assert!(parse_mem_size("4097K").unwrap_err().contains("multiple"));
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "minivm",
            "run",
            "--image",
            "a.raw",
            "--mem",
            "1G",
            "--readonly",
        ])
        .unwrap();
        let Command::Run(r) = c.command;
        assert_eq!(r.mem, 1 << 30);
        assert!(r.readonly);
        assert!(Cli::try_parse_from(["minivm", "run", "--cmdline", "a", "--append", "b"]).is_err());
        assert!(Cli::try_parse_from(["minivm", "run", "--cpus", "0"]).is_err());
    }
}
