//! The image's `User` (`name`, `uid`, `name:group`, `uid:gid`) as ids, read
//! from the image's own /etc/passwd and /etc/group (no NSS: the agent is
//! static and the image's libc is not ours to load).

/// Resolved ids of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (for `HOME`), when passwd names one.
    pub home: Option<String>,
}

/// Resolves `spec` against the contents of passwd and group (either may be
/// empty when the image has none). A number needs no entry; a name does.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Ids, String> {
    if spec.is_empty() {
        return Ok(Ids {
            uid: 0,
            gid: 0,
            home: Some("/root".into()),
        });
    }
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == user || f[2] == user));
    let (uid, mut gid, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| format!("bad uid in /etc/passwd for {user}"))?,
            f[3].parse()
                .map_err(|_| format!("bad gid in /etc/passwd for {user}"))?,
            f.get(5).map(|h| h.to_string()),
        ),
        (None, Ok(uid)) => (uid, uid, None),
        (None, Err(_)) => return Err(format!("no user {user:?} in the image's /etc/passwd")),
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        };
    }
    Ok(Ids { uid, gid, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\napp:x:1001:\n";

    #[test]
    fn names_and_numbers() {
        let ids = |s| resolve(s, PASSWD, GROUP).unwrap();
        assert_eq!(
            ids(""),
            Ids {
                uid: 0,
                gid: 0,
                home: Some("/root".into())
            }
        );
        assert_eq!(
            ids("app"),
            Ids {
                uid: 1000,
                gid: 1001,
                home: Some("/home/app".into())
            }
        );
        assert_eq!(ids("1000").gid, 1001, "a number in passwd takes its group");
        assert_eq!(
            ids("4242"),
            Ids {
                uid: 4242,
                gid: 4242,
                home: None
            }
        );
        assert_eq!(ids("app:staff").gid, 50);
        assert_eq!(ids("app:7").gid, 7);
        assert_eq!(
            ids("5:6"),
            Ids {
                uid: 5,
                gid: 6,
                home: None
            }
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(resolve("nobody-here", PASSWD, GROUP)
            .unwrap_err()
            .contains("no user"));
        assert!(resolve("app:nogroup", PASSWD, GROUP)
            .unwrap_err()
            .contains("no group"));
        assert!(resolve("app", "", "").is_err());
    }
}
