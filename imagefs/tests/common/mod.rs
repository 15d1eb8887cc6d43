//! Helpers for the source integration tests.

#![allow(dead_code)]

use imagefs::digest::Digest;
use imagefs::layer;
use imagefs::reference::ImageRef;
use imagefs::source::{self, media_types, ImageSource, ResolvedImage, SourceError, SourceOptions};
use imagefs::testutil::{self, BuiltImage, TestEntry, TestImage};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Parses a reference, panicking with the error.
pub fn r(s: &str) -> ImageRef {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Options for local registries.
pub fn insecure(credentials: Option<(&str, &str)>) -> SourceOptions {
    SourceOptions {
        tls_verify: false,
        credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
    }
}

/// Opens and resolves `reference`.
pub fn resolve(
    reference: &str,
    opts: &SourceOptions,
) -> Result<(Box<dyn ImageSource>, ResolvedImage), SourceError> {
    let mut src = source::open(&r(reference), opts)?;
    let resolved = src.resolve()?;
    Ok((src, resolved))
}

/// Reads every layer of a resolved image, decompressed.
pub fn read_layers(src: &mut dyn ImageSource, resolved: &ResolvedImage) -> Vec<Vec<u8>> {
    resolved
        .manifest
        .layers()
        .iter()
        .map(|d| {
            let blob = src
                .open_blob(d)
                .unwrap_or_else(|e| panic!("open_blob {}: {e}", d.digest()));
            let mut r = layer::decompress(d.media_type().as_ref(), blob).unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("reading layer {}: {e}", d.digest()));
            out
        })
        .collect()
}

/// Checks a resolved image against what was built: config, diff_ids, layer tars.
pub fn assert_matches_built(
    src: &mut dyn ImageSource,
    resolved: &ResolvedImage,
    built: &BuiltImage,
) {
    assert_eq!(resolved.config_digest, built.config_digest, "config digest");
    let diff_ids: Vec<String> = built.layers.iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(resolved.config.rootfs().diff_ids(), &diff_ids);
    assert_eq!(resolved.manifest.layers().len(), built.layers.len());
    assert_eq!(
        resolved.manifest.config().media_type().as_ref(),
        media_types::OCI_CONFIG
    );
    let tars = read_layers(src, resolved);
    for (i, (got, want)) in tars.iter().zip(&built.layers).enumerate() {
        assert!(
            got == &want.tar,
            "layer {i}: decompressed tar differs ({} vs {} bytes)",
            got.len(),
            want.tar.len()
        );
    }
}

/// The error text, asserting it names the image.
pub fn err_text(e: &SourceError, image: &str) -> String {
    let s = e.to_string();
    assert!(
        s.contains(image),
        "error does not name the image {image}: {s}"
    );
    s
}

/// A small image: one layer of a few files.
pub fn small_image(tag: &str) -> TestImage {
    TestImage::new(vec![vec![
        TestEntry::dir("etc"),
        TestEntry::file("etc/release", format!("small {tag}\n")),
        TestEntry::file("hello", "hello world\n"),
    ]])
}

/// Writes a layout by hand: `layers` are `(media type, blob)`, `config` and
/// `manifest` override the generated documents. Returns the manifest digest.
pub fn custom_layout(
    dir: &Path,
    tag: &str,
    layers: &[(&str, Vec<u8>)],
    config: Option<Vec<u8>>,
    manifest: Option<Vec<u8>>,
) -> Digest {
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, b)| Digest::of_bytes(b)).collect();
    let config = config.unwrap_or_else(|| {
        serde_json::to_vec(&TestImage::default().config_json(&diff_ids)).unwrap()
    });
    let config_digest = testutil::write_blob(dir, &config).unwrap();
    let descs: Vec<_> = layers
        .iter()
        .map(|(mt, b)| {
            let d = testutil::write_blob(dir, b).unwrap();
            json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()})
        })
        .collect();
    let manifest = manifest.unwrap_or_else(|| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": media_types::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": descs,
        }))
        .unwrap()
    });
    let md = testutil::write_blob(dir, &manifest).unwrap();
    let desc = json!({
        "mediaType": media_types::OCI_MANIFEST, "digest": md.to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    });
    testutil::set_index_entry(dir, Some(tag), desc).unwrap();
    md
}

/// Writes an image index blob over `(manifest digest, size, media type, os, arch)`
/// entries and tags it. Returns its digest.
pub fn index_blob(
    dir: &Path,
    tag: Option<&str>,
    entries: &[(Digest, usize, &str, &str, &str)],
    media_type: &str,
) -> Digest {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(d, size, mt, os, arch)| {
            json!({"mediaType": mt, "digest": d.to_string(), "size": size, "platform": {"os": os, "architecture": arch}})
        })
        .collect();
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
    )
    .unwrap();
    let d = testutil::write_blob(dir, &index).unwrap();
    if let Some(t) = tag {
        let desc = json!({
            "mediaType": media_type, "digest": d.to_string(), "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": t},
        });
        testutil::set_index_entry(dir, Some(t), desc).unwrap();
    }
    d
}

/// Runs a command, panicking with its output when it fails or is missing.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (install skopeo, umoci and docker-registry: scripts/setup-debian.sh)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A request seen by [`FakeServer`].
pub struct Request {
    pub path: String,
    pub authorization: String,
}

/// A response of [`FakeServer`]: status line, extra headers, body.
pub struct Response {
    pub status: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

type Handler = dyn Fn(&Request, u16) -> Response + Send + Sync;

/// A minimal HTTP/1.1 server on 127.0.0.1 (one request per connection),
/// answering with `handler(request, port)`; anything that is not an HTTP
/// GET (e.g. a TLS hello) gets a 400. Serves at most 200 connections; stops
/// on drop.
pub struct FakeServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(handler: Box<Handler>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for (served, conn) in listener.incoming().enumerate() {
                if flag.load(Ordering::SeqCst) || served > 200 {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = serve_one(c, port, &*handler);
                }
            }
        });
        FakeServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(stream: TcpStream, port: u16, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = v.trim().to_string();
            }
        }
    }
    let resp = if request_line.starts_with("GET ") {
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        handler(
            &Request {
                path,
                authorization,
            },
            port,
        )
    } else {
        Response::new("400 Bad Request", "")
    };
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    )?;
    for (k, v) in &resp.headers {
        write!(s, "{k}: {v}\r\n")?;
    }
    s.write_all(b"\r\n")?;
    s.write_all(&resp.body)?;
    s.flush()
}

/// A registry imitation with token authentication: `/v2/...` answers 401
/// with a Bearer challenge unless given `Bearer good-token`, then 404;
/// `/token` gives `good-token` for Basic `user:right`, 401 otherwise.
pub fn fake_token_registry() -> FakeServer {
    FakeServer::start(Box::new(|req, port| {
        let good_basic = format!("Basic {}", base64_encode(b"user:right"));
        if req.path.starts_with("/token") {
            if req.authorization == good_basic {
                Response::new("200 OK", r#"{"token":"good-token"}"#)
            } else {
                Response::new(
                    "401 Unauthorized",
                    r#"{"errors":[{"code":"DENIED","message":"bad credentials"}]}"#,
                )
            }
        } else if req.authorization == "Bearer good-token" {
            Response::new(
                "404 Not Found",
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
        } else {
            let challenge =
                format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:x/y:pull\"");
            Response::new(
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
            .header("WWW-Authenticate", &challenge)
        }
    }))
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
