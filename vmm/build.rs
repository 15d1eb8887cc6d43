//! Builds the guest agent (`agent/src/main.rs`) as a static executable for
//! the guest and leaves it in OUT_DIR, for `vmm/src/agent.rs` to embed. It
//! is compiled with rustc alone (the agent has no dependencies) and
//! `crt-static`, so it runs in any image, whatever libc it has or lacks.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let src = manifest.join("../agent/src");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("minivm-agent");
    println!("cargo:rerun-if-changed={}", src.display());
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition=2021",
            "--crate-name=minivm_agent",
            "--crate-type=bin",
            "--target=x86_64-unknown-linux-gnu",
            "-Copt-level=s",
            "-Cpanic=abort",
            "-Ctarget-feature=+crt-static",
            "-Cstrip=symbols",
            "-o",
        ])
        .arg(&out)
        .arg(src.join("main.rs"))
        .status()
        .expect("run rustc for the guest agent");
    assert!(status.success(), "building the guest agent failed");
    // The name of the agent's cached initramfs (vmm/src/agent/initrd.rs):
    // a hash of the executable, so a new build never meets an old file.
    let agent = std::fs::read(&out).expect("read the built agent");
    let fnv = agent.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    println!("cargo:rustc-env=MINIVM_AGENT_HASH={fnv:016x}");
}
