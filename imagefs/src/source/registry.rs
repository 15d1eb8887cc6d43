//! Registries (`docker://HOST/REPO[:TAG|@DIGEST]`) over the OCI distribution
//! API v2, with blocking HTTP (ureq, rustls with the *ring* provider).
//!
//! Authentication: requests go out anonymously; on `401` the
//! `WWW-Authenticate` challenge is answered, `Bearer` by fetching a token
//! from the realm (with the credentials, if any, as HTTP Basic) and `Basic` by
//! sending the credentials, and the request is retried once.
//!
//! With `tls_verify` false, HTTPS is tried without certificate checks and a
//! registry that does not speak TLS is used over plain HTTP, like skopeo's
//! `--tls-verify=false`.

use super::manifest::{
    self, desc_digest, is_index_type, is_manifest_type, resolve_doc, MAX_DOCUMENT,
};
use super::{name, ImageSource, ResolvedImage, SourceError, SourceOptions, ENV_PASSWORD, ENV_USER};
use crate::digest::{Digest, VerifyingReader};
use crate::reference::{ImageRef, RegistryRef};
use base64::Engine as _;
use oci_spec::image::Descriptor;
use std::io::Read;
use std::time::Duration;
use ureq::http::Response;
use ureq::Body;

/// Time to establish a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to wait for a response's headers, and for each read of a body.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest error body read for a message.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// A repository in a registry.
pub(crate) struct RegistrySource {
    reference: ImageRef,
    image: String,
    agent: ureq::Agent,
    host: String,
    repository: String,
    tag_or_digest: RegistryRef,
    tls_verify: bool,
    /// `https` or `http`, once known.
    scheme: Option<&'static str>,
    credentials: Option<(String, String)>,
    /// The `Authorization` header value, once a challenge was answered.
    authorization: Option<String>,
}

/// Percent-encodes a query parameter value.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A parsed `WWW-Authenticate` challenge: scheme and parameters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) scheme: String,
    pub(crate) params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="...",service="...",scope="a,b"` (quoted values may hold commas).
pub(crate) fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, mut rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().to_string();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = next;
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// The message of a registry error body (`{"errors":[{"code","message"}]}`), or its text.
fn error_message(resp: Response<Body>) -> String {
    let mut body = resp.into_body();
    let bytes = body
        .with_config()
        .limit(MAX_ERROR_BODY)
        .read_to_vec()
        .unwrap_or_default();
    let parsed: Option<Vec<String>> = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            let errors = v.get("errors")?.as_array()?;
            Some(
                errors
                    .iter()
                    .map(|e| {
                        let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                        let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                        format!("{code}: {msg}")
                    })
                    .collect(),
            )
        });
    match parsed {
        Some(m) if !m.is_empty() => m.join("; "),
        _ => String::from_utf8_lossy(&bytes)
            .trim()
            .chars()
            .take(300)
            .collect(),
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

impl RegistrySource {
    /// Prepares requests to the reference's registry; nothing is sent yet.
    pub(crate) fn new(r: &ImageRef, opts: &SourceOptions) -> Result<RegistrySource, SourceError> {
        let ImageRef::Registry {
            repository,
            reference,
            ..
        } = r
        else {
            unreachable!("RegistrySource for {r}")
        };
        let host = r
            .api_host()
            .expect("registry references have an API host")
            .to_string();
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(!opts.tls_verify)
            .build();
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .max_redirects(10)
            .user_agent(concat!("minivm/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls);
        if is_loopback(&host) {
            config = config.proxy(None);
        }
        Ok(RegistrySource {
            reference: r.clone(),
            image: name(r),
            agent: config.build().new_agent(),
            host,
            repository: repository.clone(),
            tag_or_digest: reference.clone(),
            tls_verify: opts.tls_verify,
            scheme: None,
            credentials: opts.effective_credentials(),
            authorization: None,
        })
    }

    fn connect_err(&self, url: &str, e: ureq::Error) -> SourceError {
        SourceError::Connect {
            image: self.image.clone(),
            url: url.to_string(),
            detail: e.to_string(),
        }
    }

    /// Picks `https`, or with `tls_verify` off, `http` if the registry does not speak TLS.
    fn scheme(&mut self) -> Result<&'static str, SourceError> {
        if let Some(s) = self.scheme {
            return Ok(s);
        }
        let scheme = if self.tls_verify {
            "https"
        } else {
            let https = format!("https://{}/v2/", self.host);
            match self.agent.get(&https).call() {
                Ok(_) => "https",
                Err(tls_err) => {
                    let http = format!("http://{}/v2/", self.host);
                    match self.agent.get(&http).call() {
                        Ok(_) => "http",
                        Err(e) => {
                            return Err(SourceError::Connect {
                                image: self.image.clone(),
                                url: http,
                                detail: format!("{e} (and over HTTPS: {tls_err})"),
                            })
                        }
                    }
                }
            }
        };
        self.scheme = Some(scheme);
        Ok(scheme)
    }

    fn send(&self, url: &str, accept: Option<&str>) -> Result<Response<Body>, SourceError> {
        let mut req = self.agent.get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth);
        }
        req.call().map_err(|e| self.connect_err(url, e))
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    fn who(&self) -> String {
        match &self.credentials {
            Some((u, _)) => format!("the credentials of user {u:?} were rejected"),
            None => format!("anonymous access was refused; set {ENV_USER} and {ENV_PASSWORD} (or pass credentials)"),
        }
    }

    /// Answers a `401` challenge: sets `self.authorization`.
    fn authenticate(&mut self, url: &str, resp: Response<Body>) -> Result<(), SourceError> {
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .collect();
        let unauthorized = |detail: String| SourceError::Unauthorized {
            image: self.image.clone(),
            url: url.to_string(),
            detail,
        };
        if let Some(c) = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        {
            let Some(realm) = c.param("realm") else {
                return Err(unauthorized(
                    "the Bearer challenge names no realm".to_string(),
                ));
            };
            let scope = c.param("scope").map_or_else(
                || format!("repository:{}:pull", self.repository),
                str::to_string,
            );
            let mut token_url = format!(
                "{realm}{}scope={}",
                if realm.contains('?') { '&' } else { '?' },
                query_escape(&scope)
            );
            if let Some(service) = c.param("service") {
                token_url.push_str(&format!("&service={}", query_escape(service)));
            }
            let mut req = self.agent.get(&token_url);
            if let Some(b) = self.basic() {
                req = req.header("Authorization", b);
            }
            let resp = req.call().map_err(|e| self.connect_err(&token_url, e))?;
            let status = resp.status().as_u16();
            if status == 401 || status == 403 {
                return Err(SourceError::Unauthorized {
                    image: self.image.clone(),
                    url: token_url,
                    detail: format!("the token service answered HTTP {status}: {}", self.who()),
                });
            }
            if status != 200 {
                let message = error_message(resp);
                return Err(SourceError::Http {
                    image: self.image.clone(),
                    url: token_url,
                    status,
                    message,
                });
            }
            let bytes = resp
                .into_body()
                .with_config()
                .limit(MAX_DOCUMENT)
                .read_to_vec()
                .map_err(|e| self.connect_err(&token_url, e))?;
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| SourceError::Json {
                    image: self.image.clone(),
                    what: format!("token response from {token_url}"),
                    detail: e.to_string(),
                })?;
            let token = v
                .get("token")
                .or_else(|| v.get("access_token"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| SourceError::Json {
                    image: self.image.clone(),
                    what: format!("token response from {token_url}"),
                    detail: "no \"token\" or \"access_token\" field".to_string(),
                })?;
            self.authorization = Some(format!("Bearer {token}"));
            Ok(())
        } else if challenges
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        {
            match self.basic() {
                Some(b) if self.authorization.as_deref() != Some(b.as_str()) => {
                    self.authorization = Some(b);
                    Ok(())
                }
                _ => Err(unauthorized(self.who())),
            }
        } else {
            Err(unauthorized(
                "HTTP 401 without a Bearer or Basic challenge".to_string(),
            ))
        }
    }

    /// GETs `path`, answering one authentication challenge. Returns the
    /// response (any status but 401) and the URL.
    fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(Response<Body>, String), SourceError> {
        let url = format!("{}://{}{path}", self.scheme()?, self.host);
        let resp = self.send(&url, accept)?;
        if resp.status().as_u16() != 401 {
            return Ok((resp, url));
        }
        self.authenticate(&url, resp)?;
        let resp = self.send(&url, accept)?;
        if resp.status().as_u16() == 401 {
            return Err(SourceError::Unauthorized {
                image: self.image.clone(),
                url,
                detail: self.who(),
            });
        }
        Ok((resp, url))
    }

    /// Maps a non-200 status to an error; `what` names the object requested.
    fn status_error(&self, resp: Response<Body>, url: String, what: String) -> SourceError {
        let status = resp.status().as_u16();
        let message = error_message(resp);
        match status {
            404 => SourceError::NotFound {
                image: self.image.clone(),
                what: format!(
                    "{what} in repository {} at {} ({message})",
                    self.repository, self.host
                ),
            },
            403 => SourceError::Unauthorized {
                image: self.image.clone(),
                url,
                detail: format!("HTTP 403 forbidden: {message}"),
            },
            _ => SourceError::Http {
                image: self.image.clone(),
                url,
                status,
                message,
            },
        }
    }

    /// GETs a manifest or index by tag or digest: bytes, digest and Content-Type.
    fn fetch_manifest(
        &mut self,
        reference: &str,
    ) -> Result<(Vec<u8>, Digest, Option<String>), SourceError> {
        use manifest::media_types::*;
        let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
        let (resp, url) = self.get(
            &format!("/v2/{}/manifests/{reference}", self.repository),
            Some(&accept),
        )?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(resp, url, format!("manifest {reference}")));
        }
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type");
        let header_digest = header("docker-content-digest");
        let bytes = resp
            .into_body()
            .with_config()
            .limit(MAX_DOCUMENT)
            .read_to_vec()
            .map_err(|e| self.connect_err(&url, e))?;
        let actual = Digest::of_bytes(&bytes);
        let mismatch = |what: &str, expected: String| SourceError::DigestMismatch {
            image: self.image.clone(),
            what: what.to_string(),
            expected,
            actual: actual.to_string(),
        };
        if reference.starts_with("sha256:") && reference != actual.to_string() {
            return Err(mismatch(
                &format!("manifest {reference}"),
                reference.to_string(),
            ));
        }
        if let Some(h) =
            header_digest.filter(|h| h.starts_with("sha256:") && *h != actual.to_string())
        {
            return Err(mismatch(
                &format!("manifest {reference} (Docker-Content-Digest header)"),
                h,
            ));
        }
        Ok((bytes, actual, content_type))
    }

    fn fetch_blob(&mut self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, SourceError> {
        let mt = desc.media_type().to_string();
        if is_manifest_type(&mt) || is_index_type(&mt) {
            let digest = desc_digest(&self.image, what, desc)?;
            let (bytes, _, _) = self.fetch_manifest(&digest.to_string())?;
            return manifest::read_verified(&self.image, what, &bytes[..], desc);
        }
        let image = self.image.clone();
        let r = self.open_blob(desc)?;
        manifest::read_verified(&image, what, r, desc)
    }
}

impl ImageSource for RegistrySource {
    fn reference(&self) -> &ImageRef {
        &self.reference
    }

    fn resolve(&mut self) -> Result<ResolvedImage, SourceError> {
        let reference = self.tag_or_digest.to_string();
        let (bytes, digest, content_type) = self.fetch_manifest(&reference)?;
        let image = self.image.clone();
        let mut fetch = |d: &Descriptor, what: &str| self.fetch_blob(d, what);
        resolve_doc(&image, bytes, digest, content_type, &mut fetch)
    }

    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let digest = desc_digest(&self.image, "blob", desc)?;
        let (resp, url) = self.get(&format!("/v2/{}/blobs/{digest}", self.repository), None)?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(resp, url, format!("blob {digest}")));
        }
        let reader = resp.into_body().into_reader();
        Ok(Box::new(VerifyingReader::new(
            reader,
            digest.clone(),
            Some(desc.size()),
            format!("blob {digest}"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#).unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("registry.example"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("REALM"), Some("Registry Realm"));
        let c = parse_challenge("Bearer realm=http://x/t, service=svc").unwrap();
        assert_eq!(c.param("realm"), Some("http://x/t"));
        assert_eq!(c.param("service"), Some("svc"));
        let c = parse_challenge(r#"Bearer realm="a\"b""#).unwrap();
        assert_eq!(c.param("realm"), Some("a\"b"));
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn escapes_and_loopback() {
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:80"));
        assert!(!is_loopback("registry-1.docker.io"));
    }
}
