//! Credentials in the jail: the user and group, the capability sets and the
//! securebits that keep them dropped.

use std::io;

use super::{os_check, JailError};

// linux/capability.h
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_MKNOD: u32 = 27;
const CAP_SETFCAP: u32 = 31;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// What a root file server needs to serve files of every owner: virtiofsd's
/// default set (owners, modes, the guest's credentials per request,
/// whiteout devices, `security.capability`).
pub(super) const FILE_SERVER_CAPS: [u32; 8] = [
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_FOWNER,
    CAP_FSETID,
    CAP_SETGID,
    CAP_SETUID,
    CAP_MKNOD,
    CAP_SETFCAP,
];

// linux/securebits.h
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability mask the jail keeps.
pub(super) fn kept_mask(uid: u32, keep_file_caps: bool) -> u64 {
    if uid != 0 || !keep_file_caps {
        return 0;
    }
    FILE_SERVER_CAPS.iter().fold(0, |m, c| m | 1 << c)
}

/// Drops to `uid`/`gid` with no supplementary groups, and every capability
/// but the kept ones, from the bounding set too; locks that in with
/// securebits (root gains nothing at exec, no ambient capabilities, and the
/// kernel's usual set-uid capability fix-ups stay as they are).
/// `set_groups`: clear the supplementary groups (not possible, nor needed,
/// in a user namespace that denies setgroups).
pub(super) fn drop_privileges(
    uid: u32,
    gid: u32,
    keep_file_caps: bool,
    set_groups: bool,
) -> Result<(), JailError> {
    let kept = kept_mask(uid, keep_file_caps);
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl and the id calls take integers only.
    unsafe {
        os_check(libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0), || {
            "securebits".into()
        })?;
        // Up to the kernel's last capability (EINVAL past it), not a fixed count.
        for cap in 0..64u32 {
            if kept & (1 << cap) != 0 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(JailError::step(format!("drop capability {cap}"))(e));
            }
        }
        if set_groups {
            os_check(libc::setgroups(0, std::ptr::null()), || {
                "drop supplementary groups".into()
            })?;
        }
        os_check(libc::setresgid(gid, gid, gid), || {
            format!("switch to group {gid}")
        })?;
        os_check(libc::setresuid(uid, uid, uid), || {
            format!("switch to user {uid}")
        })?;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: kept as u32,
            permitted: kept as u32,
            inheritable: 0,
        },
        CapData {
            effective: (kept >> 32) as u32,
            permitted: (kept >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, as passed.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    os_check(ret as libc::c_int, || "set capabilities".into())?;
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    os_check(ret, || "clear ambient capabilities".into())
}

/// Reads back what [`drop_privileges`] set; any difference is an error.
pub(super) fn verify(uid: u32, gid: u32, keep_file_caps: bool) -> Result<(), JailError> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    let (mut rg, mut eg, mut sg) = (0, 0, 0);
    // SAFETY: each call writes three ids we pass pointers to.
    unsafe {
        libc::getresuid(&mut r, &mut e, &mut s);
        libc::getresgid(&mut rg, &mut eg, &mut sg);
    }
    let mismatch = |what: String| JailError::Step {
        step: "verify".into(),
        source: io::Error::other(what),
    };
    if [r, e, s] != [uid; 3] || [rg, eg, sg] != [gid; 3] {
        return Err(mismatch(format!("ids {r}/{e}/{s}:{rg}/{eg}/{sg}")));
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes a v3 header and two data structs, as passed.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    os_check(ret as libc::c_int, || "read capabilities".into())?;
    let eff = u64::from(data[0].effective) | u64::from(data[1].effective) << 32;
    let want = kept_mask(uid, keep_file_caps);
    if eff != want {
        return Err(mismatch(format!("capabilities {eff:#x}, want {want:#x}")));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAPBSET_READ,
            CAP_SYS_ADMIN as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(mismatch("CAP_SYS_ADMIN still in the bounding set".into()));
    }
    Ok(())
}
