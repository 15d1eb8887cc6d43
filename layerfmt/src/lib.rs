//! The on-disk format of minivm's layer store, in one place.
//!
//! The layer store (`imagefs::layerstore`) writes each OCI layer into its own
//! directory in the form kernel overlayfs, fuse-overlayfs and minivm's
//! `LayeredFs` (in `devices`) read; `LayeredFs` writes the per-VM writable
//! layer in the same form. Both sides take every name and codec from here:
//!
//! - a **whiteout** (a name deleted by an upper layer) is a character device
//!   0:0 ([`is_whiteout`]);
//! - an **opaque directory** (one that hides the layers below) carries
//!   [`OPAQUE_XATTR`] = [`OPAQUE_VALUE`]; when reading, any of
//!   [`OPAQUE_XATTRS_READ`] with a one-byte `y`/`Y` counts ([`is_opaque_value`]);
//! - xattrs under [`RESERVED_XATTR_PREFIXES`] are never taken from an image
//!   ([`is_reserved_xattr`]); those under [`OVERLAY_XATTR_PREFIX`] and
//!   [`PRIVATE_XATTR_PREFIX`] are bookkeeping, never shown to a guest
//!   ([`is_bookkeeping_xattr`]);
//! - an unprivileged store keeps the image's owner, mode and device number in
//!   [`OVERRIDE_XATTR`] ([`Override`]) and xattrs outside `user.` under
//!   [`MAPPED_XATTR_PREFIX`] ([`mapped_xattr_name`], [`unmapped_xattr_name`]).

use std::fmt;

/// Version of the on-disk layout of a layer-store entry; entries of other
/// versions are rebuilt.
pub const LAYER_FORMAT: &str = "minivm-layer-1";

/// Xattr that marks an opaque directory (value [`OPAQUE_VALUE`]). The one
/// name that can be written without root and that kernel overlayfs
/// (`-o userxattr`) and fuse-overlayfs read too.
pub const OPAQUE_XATTR: &str = "user.overlay.opaque";
/// The value [`OPAQUE_XATTR`] is written with.
pub const OPAQUE_VALUE: &[u8] = b"y";
/// Opaque markers recognised when reading a layer (fuse-overlayfs's, kernel
/// overlayfs's privileged and unprivileged forms).
pub const OPAQUE_XATTRS_READ: [&str; 3] = [
    "user.fuseoverlayfs.opaque",
    "trusted.overlay.opaque",
    OPAQUE_XATTR,
];
/// Prefix of overlayfs's own xattrs (opaque, redirect, ...).
pub const OVERLAY_XATTR_PREFIX: &str = "user.overlay.";
/// Prefix of minivm's own xattrs.
pub const PRIVATE_XATTR_PREFIX: &str = "user.minivm.";
/// Unprivileged stores: the image's owner, mode and device number ([`Override`]).
pub const OVERRIDE_XATTR: &str = "user.minivm.override";
/// Unprivileged stores: prefix under which xattrs outside `user.` are kept.
pub const MAPPED_XATTR_PREFIX: &str = "user.minivm.xattr.";

/// Whether a file of this `st_mode`/`st_rdev` is a whiteout (a character
/// device 0:0).
pub fn is_whiteout(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// Whether an opaque xattr's value marks the directory opaque.
pub fn is_opaque_value(value: &[u8]) -> bool {
    matches!(value, b"y" | b"Y")
}

/// Xattr prefixes that overlay implementations interpret or the store uses
/// itself: an image's xattrs under them are dropped, so that no image can
/// forge a marker.
pub const RESERVED_XATTR_PREFIXES: [&str; 4] = [
    "trusted.overlay.",
    OVERLAY_XATTR_PREFIX,
    "user.fuseoverlayfs.",
    PRIVATE_XATTR_PREFIX,
];

/// Whether an image's xattr of this name is dropped when unpacking (see
/// [`RESERVED_XATTR_PREFIXES`]).
pub fn is_reserved_xattr(name: &[u8]) -> bool {
    RESERVED_XATTR_PREFIXES
        .iter()
        .any(|p| name.starts_with(p.as_bytes()))
}

/// Whether a stored xattr is the merge's bookkeeping (overlay markers,
/// minivm's own), which a guest never sees or sets under that name.
pub fn is_bookkeeping_xattr(name: &[u8]) -> bool {
    name.starts_with(OVERLAY_XATTR_PREFIX.as_bytes())
        || name.starts_with(PRIVATE_XATTR_PREFIX.as_bytes())
}

/// The name an xattr is stored under in an unprivileged store: `user.`
/// names as they are, others under [`MAPPED_XATTR_PREFIX`].
pub fn mapped_xattr_name(name: &[u8]) -> Vec<u8> {
    if name.starts_with(b"user.") {
        name.to_vec()
    } else {
        [MAPPED_XATTR_PREFIX.as_bytes(), name].concat()
    }
}

/// The inverse of [`mapped_xattr_name`] for a stored name: the name the
/// image (or guest) gave, or None for bookkeeping that is no xattr of theirs.
pub fn unmapped_xattr_name(stored: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = stored.strip_prefix(MAPPED_XATTR_PREFIX.as_bytes()) {
        return (!rest.is_empty() && !rest.starts_with(b"user.")).then_some(rest);
    }
    (!is_bookkeeping_xattr(stored)).then_some(stored)
}

/// Whether the host can keep user xattrs (hence an [`Override`]) on a file
/// of this type: regular files and directories only, not symlinks, FIFOs,
/// sockets or devices.
pub fn carries_override(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// The image's owner, mode and device number of an entry of an unprivileged
/// store, kept in [`OVERRIDE_XATTR`] as `uid:gid:mode[:major:minor]`, mode
/// being the whole `st_mode` (file type included) in octal, e.g.
/// `0:0:104755` (a setuid root file) or `0:0:20666:1:3` (`/dev/null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Major and minor number, for devices.
    pub rdev: Option<(u32, u32)>,
}

impl Override {
    /// Parses the xattr value; None if it is not in the format.
    pub fn parse(value: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(value).ok()?;
        let f: Vec<&str> = s.split(':').collect();
        let rdev = match f.len() {
            3 => None,
            5 => Some((f[3].parse().ok()?, f[4].parse().ok()?)),
            _ => return None,
        };
        Some(Override {
            uid: f[0].parse().ok()?,
            gid: f[1].parse().ok()?,
            mode: u32::from_str_radix(f[2], 8).ok()?,
            rdev,
        })
    }

    /// The xattr value.
    pub fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{:o}", self.uid, self.gid, self.mode)?;
        if let Some((major, minor)) = self.rdev {
            write!(f, ":{major}:{minor}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_round_trips() {
        let cases = [
            Override {
                uid: 0,
                gid: 5,
                mode: 0o20620,
                rdev: Some((4, 1)),
            },
            Override {
                uid: 1000,
                gid: 1000,
                mode: 0o104755,
                rdev: None,
            },
            Override {
                uid: u32::MAX,
                gid: 0,
                mode: 0o40700,
                rdev: None,
            },
        ];
        for o in cases {
            assert_eq!(Override::parse(&o.encode()), Some(o), "{o}");
        }
        assert_eq!(
            Override::parse(b"0:5:20620:4:1").unwrap().encode(),
            b"0:5:20620:4:1"
        );
        assert_eq!(
            Override::parse(b"1000:1000:104755"),
            Some(Override {
                uid: 1000,
                gid: 1000,
                mode: 0o104755,
                rdev: None
            })
        );
    }

    #[test]
    fn override_rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"0",
            b"0:0",
            b"0:0:8",
            b"0:0:644:1",
            b"0:0:644:1:2:3",
            b"a:0:644",
            b"0:-1:644",
            b"0:0:644:x:1",
            b"4294967296:0:644",
            b"\xff:0:644",
        ] {
            assert_eq!(Override::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn whiteouts_are_char_devices_zero_zero() {
        assert!(is_whiteout(libc::S_IFCHR | 0o644, 0));
        assert!(!is_whiteout(libc::S_IFCHR | 0o644, libc::makedev(1, 3)));
        assert!(!is_whiteout(libc::S_IFREG | 0o644, 0));
        assert!(!is_whiteout(libc::S_IFBLK, 0));
    }

    #[test]
    fn opaque_values() {
        assert!(is_opaque_value(b"y") && is_opaque_value(b"Y"));
        assert!(!is_opaque_value(b"") && !is_opaque_value(b"yes") && !is_opaque_value(b"n"));
        assert_eq!(OPAQUE_VALUE, b"y");
    }

    #[test]
    fn bookkeeping_xattrs_cannot_pass_as_content() {
        for n in [
            "user.overlay.opaque",
            "user.overlay.redirect",
            "user.minivm.override",
        ] {
            assert!(is_bookkeeping_xattr(n.as_bytes()), "{n}");
            assert!(is_reserved_xattr(n.as_bytes()), "{n}");
            assert_eq!(unmapped_xattr_name(n.as_bytes()), None, "{n}");
        }
        for n in ["trusted.overlay.opaque", "user.fuseoverlayfs.opaque"] {
            assert!(is_reserved_xattr(n.as_bytes()), "{n}");
        }
        for n in OPAQUE_XATTRS_READ {
            assert!(is_reserved_xattr(n.as_bytes()), "{n}");
        }
        for n in [
            "user.note",
            "security.capability",
            "trusted.foo",
            "user.overlayx",
        ] {
            assert!(!is_bookkeeping_xattr(n.as_bytes()), "{n}");
            assert!(!is_reserved_xattr(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn mapped_names_round_trip() {
        for n in [
            "security.capability",
            "trusted.x",
            "system.posix_acl_access",
        ] {
            let stored = mapped_xattr_name(n.as_bytes());
            assert!(stored.starts_with(MAPPED_XATTR_PREFIX.as_bytes()));
            assert_eq!(unmapped_xattr_name(&stored), Some(n.as_bytes()));
        }
        assert_eq!(mapped_xattr_name(b"user.note"), b"user.note");
        assert_eq!(unmapped_xattr_name(b"user.note"), Some(&b"user.note"[..]));
        // A user.* name under the prefix could only be forged: it is not the guest's.
        assert_eq!(unmapped_xattr_name(b"user.minivm.xattr.user.x"), None);
        assert_eq!(unmapped_xattr_name(b"user.minivm.xattr."), None);
        assert_eq!(unmapped_xattr_name(b"user.minivm.override"), None);
    }

    #[test]
    fn overrides_only_on_files_and_dirs() {
        assert!(carries_override(libc::S_IFREG | 0o644));
        assert!(carries_override(libc::S_IFDIR | 0o755));
        for t in [
            libc::S_IFLNK,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
        ] {
            assert!(!carries_override(t | 0o644));
        }
    }
}
