//! Many VMs at once on one host: 50 tiny guests and 3 Linux guests started
//! together, each ending with its own exit status, none mixed up with
//! another's (console, status), none lost.

use std::time::Duration;

use testkit::*;

#[test]
fn fifty_tiny_vms_at_once_each_with_its_own_status() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("fleet-tiny");
    let runs: Vec<_> = (0..50u8)
        .map(|i| {
            let status = i * 5 + 1;
            let guest = TinyGuest {
                message: format!("vm {status} up\n").into_bytes(),
                boot_marker: false,
                end: TinyEnd::Exit(status),
            };
            let k = guest.write(&dir, &format!("guest-{status}.elf"));
            std::thread::spawn(move || {
                let k = k.to_str().unwrap().to_string();
                let out = run_minivm(
                    ["run", "--kernel", &k, "--mem", "64M"],
                    Duration::from_secs(300),
                );
                (status, out)
            })
        })
        .collect();
    for r in runs {
        let (status, out) = r.join().unwrap();
        assert_eq!(out.code(), i32::from(status), "{out:#?}");
        assert_eq!(out.stdout, format!("vm {status} up\n"));
    }
}

#[test]
fn three_linux_vms_at_once() {
    if !kvm_available() {
        return;
    }
    let runs: Vec<_> = (1..=3u8)
        .map(|n| {
            let dir = scratch_dir(&format!("fleet-linux-{n}"));
            let script = format!(
                "#!/bin/sh\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\necho \"FLEET VM {n} UP cpus=$(grep -c ^processor /proc/cpuinfo)\"\n{}\n",
                exit_port_cmd(40 + n)
            );
            let mut args = initramfs_boot_args(&dir, &script);
            args.extend(["--mem", "128M"].map(String::from));
            std::thread::spawn(move || (n, run_minivm(&args, BOOT_TIMEOUT)))
        })
        .collect();
    for r in runs {
        let (n, out) = r.join().unwrap();
        assert_eq!(out.code(), i32::from(40 + n), "{out:#?}");
        assert!(
            out.stdout.contains(&format!("FLEET VM {n} UP cpus=1")),
            "{out:#?}"
        );
        for other in (1..=3).filter(|&m| m != n) {
            assert!(
                !out.stdout.contains(&format!("FLEET VM {other} UP")),
                "consoles mixed: {out:#?}"
            );
        }
    }
}
