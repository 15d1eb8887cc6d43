//! A real registry: the tricky image pushed, pulled and booted twice at once
//! (copy-on-write per VM).

use std::path::PathBuf;
use std::time::Instant;

use minivm_tests::guest_check::*;
use minivm_tests::oci::*;
use testkit::*;

/// What the registry test's guests do after the check: each writes a file,
/// waits for the other, and lists what it sees.
const COW_TAIL: &[u8] = br#"
vm=$(sed 's/.*vmname=\([a-z]*\).*/\1/' /proc/cmdline)
echo "written by $vm" > /written-$vm
sync
sleep 15
for f in /written-*; do echo "SEES $f"; done
"#;

/// The tricky image, plus busybox and the check script, pushed to a real
/// registry (Debian's docker-registry), pulled, and booted twice at once:
/// the guests see the image exactly, and neither each other's writes nor the
/// cached disk changes.
#[test]
fn registry_pull_boot_and_copy_on_write() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("oci-registry");
    let cache = dir.join("cache");
    let image = checked_image(&dir, COW_TAIL);
    let layout = dir.join("layout");
    image
        .write_oci_layout(&layout, "1", Compression::Gzip)
        .unwrap();

    let registry = TestRegistry::start(None).unwrap();
    let remote = format!("docker://{}/test/tricky:1", registry.host());
    skopeo_copy(
        &format!("oci:{}:1", layout.display()),
        &remote,
        &["--dest-tls-verify=false"],
    )
    .unwrap();

    // Without --tls-verify=false the plain-HTTP registry is refused, clearly.
    let out = run(minivm(&cache).args(["pull", &remote]));
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(out.stderr.contains(&registry.host()), "{}", out.stderr);

    let out = run(minivm(&cache).args(["pull", &remote, "--tls-verify=false"]));
    assert_eq!(out.code(), 0, "{out:#?}");
    let disk_path = PathBuf::from(
        out.stdout
            .split_whitespace()
            .nth(1)
            .expect("pull prints KEY PATH"),
    );
    e2fsck_clean(&disk_path);
    let before = std::fs::read(&disk_path).unwrap();

    let kernel = default_kernel();
    let spawn = |vm: &str| {
        let mut c = minivm(&cache);
        c.args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--oci",
            &remote,
            "--tls-verify=false",
            "--append",
            &format!("quiet init=/check vmname={vm}"),
        ]);
        std::thread::spawn(move || run_minivm_with(&mut c, BOOT_TIMEOUT))
    };
    let started = Instant::now();
    let (a, b) = (spawn("a"), spawn("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    eprintln!("two concurrent boots took {:?}", started.elapsed());
    for (vm, out) in [("a", &a), ("b", &b)] {
        assert_eq!(out.code(), 10, "vm {vm}: {out:#?}");
        assert!(out.stdout.contains("CHECK DONE"), "vm {vm}: {}", out.stdout);
        let guest = parse_guest(&out.stdout);
        let sees = guest.get("SEES").cloned().unwrap_or_default();
        assert_eq!(
            sees,
            vec![format!("/written-{vm}")],
            "vm {vm} sees another VM's writes: {sees:?}"
        );
        let bad = compare(&guest);
        assert!(
            bad.is_empty(),
            "vm {vm}: the guest's view differs from the image:\n{}\n{}",
            bad.join("\n"),
            out.stdout
        );
    }
    assert!(
        std::fs::read(&disk_path).unwrap() == before,
        "a VM changed the cached disk"
    );
    let (entries, tmp) = cache_entries(&cache);
    assert_eq!((entries, tmp), (1, 0));
}
