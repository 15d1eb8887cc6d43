//! Image references in skopeo's `TRANSPORT:DETAILS` syntax.
//!
//! | form | meaning |
//! |---|---|
//! | `oci:DIR[:TAG]` | an OCI image layout directory; TAG is an `org.opencontainers.image.ref.name` |
//! | `oci-archive:FILE[:TAG]` | a tar file holding an OCI image layout |
//! | `docker-archive:FILE[:REPO:TAG \| :@N]` | what `docker save` writes; a name from `RepoTags`, or the Nth image |
//! | `docker://[HOST[:PORT]/]REPO[:TAG \| @sha256:HEX]` | a registry (OCI distribution API v2) |
//!
//! As in skopeo, the path of `oci:` and `oci-archive:` ends at the first `:`.
//! Registry names are normalized like Docker does: `docker://alpine` is
//! `docker://docker.io/library/alpine:latest`.

use crate::digest::Digest;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The registry host Docker Hub names use.
pub const DOCKER_HUB: &str = "docker.io";
/// The host serving Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Errors parsing an image reference. Each names the string given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// No `TRANSPORT:` prefix.
    #[error("image reference {input:?} has no transport: write e.g. {suggestion}")]
    MissingTransport {
        /// The string given.
        input: String,
        /// What the user probably meant.
        suggestion: String,
    },
    /// A transport skopeo knows but minivm does not read.
    #[error("image reference {input:?}: transport {transport:?} is not supported (use docker://, oci:, oci-archive: or docker-archive:)")]
    UnsupportedTransport {
        /// The string given.
        input: String,
        /// The transport named.
        transport: String,
    },
    /// The part after the transport is malformed.
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid {
        /// The string given.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// What to fetch from a registry repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegistryRef {
    /// A tag, e.g. `latest`.
    Tag(String),
    /// A manifest (or index) digest.
    Digest(Digest),
}

impl fmt::Display for RegistryRef {
    /// The form used in a `/v2/<repo>/manifests/<ref>` URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryRef::Tag(t) => f.write_str(t),
            RegistryRef::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick; None if the index has exactly one manifest.
        reference: Option<String>,
    },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive {
        /// The tar file.
        file: PathBuf,
        /// As for [`ImageRef::OciLayout`].
        reference: Option<String>,
    },
    /// `docker-archive:FILE[:NAME]`: a `docker save` tar.
    DockerArchive {
        /// The tar file.
        file: PathBuf,
        /// A normalized `REPO:TAG` (e.g. `docker.io/library/busybox:latest`) matched
        /// against `RepoTags`, or `@N` for the Nth image (0-based); None if the
        /// archive holds exactly one image.
        name: Option<String>,
    },
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: a registry.
    Registry {
        /// `host[:port]` as written (Docker Hub is `docker.io`; see [`ImageRef::api_host`]).
        host: String,
        /// Repository path, e.g. `library/alpine`.
        repository: String,
        /// Tag or digest.
        reference: RegistryRef,
    },
}

impl ImageRef {
    /// The transport name: `oci`, `oci-archive`, `docker-archive` or `docker`.
    pub fn transport(&self) -> &'static str {
        match self {
            ImageRef::OciLayout { .. } => "oci",
            ImageRef::OciArchive { .. } => "oci-archive",
            ImageRef::DockerArchive { .. } => "docker-archive",
            ImageRef::Registry { .. } => "docker",
        }
    }

    /// For registries, the host (and port) to send API requests to:
    /// `registry-1.docker.io` for Docker Hub. None for local transports.
    pub fn api_host(&self) -> Option<&str> {
        match self {
            ImageRef::Registry { host, .. } if host == DOCKER_HUB => Some(DOCKER_HUB_API),
            ImageRef::Registry { host, .. } => Some(host),
            _ => None,
        }
    }
}

impl fmt::Display for ImageRef {
    /// The canonical string, which parses back to the same reference.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::OciLayout { dir, reference } => {
                write!(f, "oci:{}", dir.display())?;
                reference.iter().try_for_each(|r| write!(f, ":{r}"))
            }
            ImageRef::OciArchive { file, reference } => {
                write!(f, "oci-archive:{}", file.display())?;
                reference.iter().try_for_each(|r| write!(f, ":{r}"))
            }
            ImageRef::DockerArchive { file, name } => {
                write!(f, "docker-archive:{}", file.display())?;
                name.iter().try_for_each(|n| write!(f, ":{n}"))
            }
            ImageRef::Registry {
                host,
                repository,
                reference,
            } => match reference {
                RegistryRef::Tag(t) => write!(f, "docker://{host}/{repository}:{t}"),
                RegistryRef::Digest(d) => write!(f, "docker://{host}/{repository}@{d}"),
            },
        }
    }
}

/// Transports skopeo has that minivm does not read.
const OTHER_TRANSPORTS: &[&str] = &[
    "containers-storage",
    "dir",
    "docker-daemon",
    "ostree",
    "sif",
    "tarball",
    "atomic",
    "docker",
];

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ReferenceError::Invalid {
            input: input.to_string(),
            reason,
        };
        if let Some(rest) = input.strip_prefix("docker://") {
            let name = parse_docker_name(rest).map_err(invalid)?;
            return Ok(ImageRef::Registry {
                host: name.host,
                repository: name.repository,
                reference: name.reference,
            });
        }
        let (transport, rest) = input.split_once(':').unwrap_or(("", input));
        match transport {
            "oci" | "oci-archive" => {
                let (path, reference) = match rest.split_once(':') {
                    Some((p, r)) if !r.is_empty() => (p, Some(r)),
                    Some((p, _)) => (p, None),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err(invalid(format!(
                        "{transport}: needs a path, e.g. {transport}:/path/to/image:TAG"
                    )));
                }
                if let Some(r) = reference {
                    check_oci_ref_name(r).map_err(invalid)?;
                }
                let reference = reference.map(str::to_string);
                Ok(if transport == "oci" {
                    ImageRef::OciLayout {
                        dir: PathBuf::from(path),
                        reference,
                    }
                } else {
                    ImageRef::OciArchive {
                        file: PathBuf::from(path),
                        reference,
                    }
                })
            }
            "docker-archive" => {
                let (path, name) = match rest.split_once(':') {
                    Some((p, n)) if !n.is_empty() => (p, Some(n)),
                    Some((p, _)) => (p, None),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err(invalid(
                        "docker-archive: needs a file, e.g. docker-archive:image.tar".to_string(),
                    ));
                }
                let name = match name {
                    None => None,
                    Some(n) if n.starts_with('@') => {
                        n[1..].parse::<usize>().map_err(|_| {
                            invalid(format!("{n:?} is not a source index: expected @N with N a non-negative integer"))
                        })?;
                        Some(n.to_string())
                    }
                    Some(n) => Some(normalize_docker_tag_name(n).map_err(invalid)?),
                };
                Ok(ImageRef::DockerArchive {
                    file: PathBuf::from(path),
                    name,
                })
            }
            t if OTHER_TRANSPORTS.contains(&t) => Err(ReferenceError::UnsupportedTransport {
                input: input.to_string(),
                transport: t.to_string(),
            }),
            _ => {
                let suggestion = if input.is_empty() {
                    "docker://NAME[:TAG] or oci:DIR[:TAG]".to_string()
                } else if input.starts_with('/') || input.starts_with('.') {
                    format!("oci:{input} or oci-archive:{input}")
                } else {
                    format!("docker://{input} or oci:{input}")
                };
                Err(ReferenceError::MissingTransport {
                    input: input.to_string(),
                    suggestion,
                })
            }
        }
    }
}

/// The parts of a Docker image name such as `quay.io/org/app:1.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerName {
    /// Registry `host[:port]`; `docker.io` when none was given.
    pub host: String,
    /// Repository path (with `library/` added for Docker Hub official images).
    pub repository: String,
    /// Tag (`latest` when none was given) or digest.
    pub reference: RegistryRef,
}

impl fmt::Display for DockerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            RegistryRef::Tag(t) => write!(f, "{}/{}:{t}", self.host, self.repository),
            RegistryRef::Digest(d) => write!(f, "{}/{}@{d}", self.host, self.repository),
        }
    }
}

/// Parses and normalizes a Docker image name (`alpine`, `host:5000/a/b:tag`,
/// `name@sha256:...`) as Docker does. The error string says what is wrong.
pub fn parse_docker_name(s: &str) -> Result<DockerName, String> {
    if s.is_empty() {
        return Err("empty image name".to_string());
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| e.to_string())?)),
        None => (s, None),
    };
    // A tag is a ':' after the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if digest.is_some() && tag.is_some() {
        return Err(
            "a reference with both a tag and a digest is not supported; use one of them"
                .to_string(),
        );
    }
    let (host, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let host = if host == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        host
    };
    check_host(&host)?;
    let repository = if host == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    check_repository(&repository)?;
    let reference = match (tag, digest) {
        (_, Some(d)) => RegistryRef::Digest(d),
        (Some(t), None) => {
            check_tag(t)?;
            RegistryRef::Tag(t.to_string())
        }
        (None, None) => RegistryRef::Tag("latest".to_string()),
    };
    Ok(DockerName {
        host,
        repository,
        reference,
    })
}

/// Normalizes `NAME[:TAG]` to `HOST/REPO:TAG` (digests are refused), the
/// form used to match a docker-archive's `RepoTags`.
pub fn normalize_docker_tag_name(s: &str) -> Result<String, String> {
    let name = parse_docker_name(s)?;
    if matches!(name.reference, RegistryRef::Digest(_)) {
        return Err(format!(
            "{s:?}: docker-archive names are REPO:TAG; digests are not supported"
        ));
    }
    Ok(name.to_string())
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        // "[v6]" without a port, or a bare (invalid) IPv6 address.
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (host, None),
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.parse::<u16>().is_err() {
            return Err(format!("invalid port {p:?} in registry host {host:?}"));
        }
    }
    let ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        !v6.is_empty()
            && v6
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid registry host {host:?}"))
    }
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("empty repository name".to_string());
    }
    if repo.len() > 255 {
        return Err(format!(
            "repository name is {} bytes; at most 255 are allowed",
            repo.len()
        ));
    }
    for component in repo.split('/') {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("repository name {repo:?} must be lowercase"));
        }
        // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let mut ok = !bytes.is_empty() && alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
        let mut i = 0;
        while ok && i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        }
        if !ok {
            return Err(format!(
                "invalid repository path component {component:?} in {repo:?}: \
                 use lowercase letters and digits separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}: up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'"))
    }
}

fn check_oci_ref_name(r: &str) -> Result<(), String> {
    if r.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._:@+/".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {r:?}: use letters, digits and -._:@+/"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn reg(s: &str) -> (String, String, RegistryRef) {
        match parse(s) {
            ImageRef::Registry {
                host,
                repository,
                reference,
            } => (host, repository, reference),
            other => panic!("{s}: not a registry reference: {other:?}"),
        }
    }

    fn tag(t: &str) -> RegistryRef {
        RegistryRef::Tag(t.to_string())
    }

    #[test]
    fn oci_layout_forms() {
        assert_eq!(
            parse("oci:/tmp/img"),
            ImageRef::OciLayout {
                dir: "/tmp/img".into(),
                reference: None
            }
        );
        assert_eq!(
            parse("oci:/tmp/img:"),
            ImageRef::OciLayout {
                dir: "/tmp/img".into(),
                reference: None
            }
        );
        assert_eq!(
            parse("oci:rel/dir:v1.0"),
            ImageRef::OciLayout {
                dir: "rel/dir".into(),
                reference: Some("v1.0".into())
            }
        );
        // skopeo splits at the first colon; the rest is the ref name.
        assert_eq!(
            parse("oci:img:example.com/app:1"),
            ImageRef::OciLayout {
                dir: "img".into(),
                reference: Some("example.com/app:1".into())
            }
        );
        assert_eq!(
            parse("oci-archive:/x/img.tar:latest"),
            ImageRef::OciArchive {
                file: "/x/img.tar".into(),
                reference: Some("latest".into())
            }
        );
        assert_eq!(
            parse("oci-archive:img.tar"),
            ImageRef::OciArchive {
                file: "img.tar".into(),
                reference: None
            }
        );
    }

    #[test]
    fn docker_archive_forms() {
        assert_eq!(
            parse("docker-archive:a.tar"),
            ImageRef::DockerArchive {
                file: "a.tar".into(),
                name: None
            }
        );
        assert_eq!(
            parse("docker-archive:a.tar:busybox"),
            ImageRef::DockerArchive {
                file: "a.tar".into(),
                name: Some("docker.io/library/busybox:latest".into())
            }
        );
        assert_eq!(
            parse("docker-archive:/a.tar:localhost:5000/x/y:v2"),
            ImageRef::DockerArchive {
                file: "/a.tar".into(),
                name: Some("localhost:5000/x/y:v2".into())
            }
        );
        assert_eq!(
            parse("docker-archive:a.tar:@1"),
            ImageRef::DockerArchive {
                file: "a.tar".into(),
                name: Some("@1".into())
            }
        );
    }

    #[test]
    fn registry_forms() {
        assert_eq!(
            reg("docker://alpine"),
            ("docker.io".into(), "library/alpine".into(), tag("latest"))
        );
        assert_eq!(
            reg("docker://alpine:3.20"),
            ("docker.io".into(), "library/alpine".into(), tag("3.20"))
        );
        assert_eq!(
            reg("docker://user/app"),
            ("docker.io".into(), "user/app".into(), tag("latest"))
        );
        assert_eq!(
            reg("docker://index.docker.io/alpine"),
            ("docker.io".into(), "library/alpine".into(), tag("latest"))
        );
        assert_eq!(
            reg("docker://quay.io/a/b/c:t"),
            ("quay.io".into(), "a/b/c".into(), tag("t"))
        );
        assert_eq!(
            reg("docker://localhost/x"),
            ("localhost".into(), "x".into(), tag("latest"))
        );
        assert_eq!(
            reg("docker://127.0.0.1:5000/test/img:v1"),
            ("127.0.0.1:5000".into(), "test/img".into(), tag("v1"))
        );
        assert_eq!(
            reg("docker://host:5000/img"),
            ("host:5000".into(), "img".into(), tag("latest"))
        );
        assert_eq!(
            reg("docker://[::1]:5000/img:x"),
            ("[::1]:5000".into(), "img".into(), tag("x"))
        );
        assert_eq!(
            reg("docker://a-b.c/d_e__f/g--h.i:T_1.x-y").1,
            "d_e__f/g--h.i"
        );
        let d = Digest::parse(D).unwrap();
        assert_eq!(
            reg(&format!("docker://ghcr.io/o/r@{D}")),
            (
                "ghcr.io".into(),
                "o/r".into(),
                RegistryRef::Digest(d.clone())
            )
        );
        assert_eq!(
            reg(&format!("docker://busybox@{D}")),
            (
                "docker.io".into(),
                "library/busybox".into(),
                RegistryRef::Digest(d)
            )
        );
        assert_eq!(parse("docker://alpine").api_host(), Some(DOCKER_HUB_API));
        assert_eq!(parse("docker://quay.io/x").api_host(), Some("quay.io"));
        assert_eq!(parse("oci:x").api_host(), None);
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, canonical) in [
            (
                "docker://alpine",
                "docker://docker.io/library/alpine:latest",
            ),
            (
                "docker://127.0.0.1:5000/a/b:c",
                "docker://127.0.0.1:5000/a/b:c",
            ),
            (
                &format!("docker://x.io/y@{D}"),
                &format!("docker://x.io/y@{D}"),
            ),
            ("oci:/d", "oci:/d"),
            ("oci:/d:", "oci:/d"),
            ("oci:/d:t", "oci:/d:t"),
            ("oci-archive:f.tar:t", "oci-archive:f.tar:t"),
            (
                "docker-archive:f.tar:busybox",
                "docker-archive:f.tar:docker.io/library/busybox:latest",
            ),
            ("docker-archive:f.tar:@0", "docker-archive:f.tar:@0"),
        ] {
            let r = parse(input);
            assert_eq!(r.to_string(), canonical);
            assert_eq!(parse(canonical), r, "{canonical}");
        }
        assert_eq!(parse("oci:x").transport(), "oci");
        assert_eq!(parse("docker://x").transport(), "docker");
    }

    #[test]
    fn bad_references() {
        let cases: &[(&str, &str)] = &[
            ("alpine", "docker://alpine or oci:alpine"),
            ("alpine:latest", "docker://alpine:latest"),
            ("/tmp/image", "oci:/tmp/image"),
            ("", "docker://NAME"),
            ("docker:alpine", "not supported"),
            ("containers-storage:alpine", "not supported"),
            ("docker://", "empty image name"),
            ("docker://Alpine", "must be lowercase"),
            ("docker://-bad.io/x", "invalid registry host"),
            ("docker://::1/x", "invalid registry host"),
            ("docker://library/UPPER", "must be lowercase"),
            ("docker://alpine:", "invalid tag"),
            ("docker://alpine:-x", "invalid tag"),
            ("docker://alpine@sha256:abc", "64 lowercase hex"),
            ("docker://alpine@md5:abc", "only sha256"),
            (&format!("docker://alpine:3@{D}"), "both a tag and a digest"),
            ("docker://host:99999/x", "invalid port"),
            ("docker://host:/x", "invalid port"),
            ("docker://a//b", "invalid repository path component"),
            ("docker://a/b-", "invalid repository path component"),
            ("docker://a/.b", "invalid repository path component"),
            ("oci:", "needs a path"),
            ("oci::tag", "needs a path"),
            ("oci:dir:bad tag", "invalid tag"),
            ("oci-archive:", "needs a path"),
            ("docker-archive:", "needs a file"),
            ("docker-archive:a.tar:@x", "not a source index"),
            ("docker-archive:a.tar:@-1", "not a source index"),
            (
                &format!("docker-archive:a.tar:busybox@{D}"),
                "digests are not supported",
            ),
        ];
        for (input, needle) in cases {
            let e = input.parse::<ImageRef>().expect_err(input).to_string();
            assert!(e.contains(needle), "{input:?}: {e:?} lacks {needle:?}");
            assert!(
                e.contains(&format!("{input:?}")),
                "{input:?}: error does not name the input: {e}"
            );
        }
        let long = format!("docker://x/{}", "a".repeat(300));
        assert!(long
            .parse::<ImageRef>()
            .unwrap_err()
            .to_string()
            .contains("at most 255"));
    }
}
