//! A fake registry: a minimal HTTP/1.1 server answering with a handler, for
//! registry behaviour a real registry will not show (token challenges,
//! redirects, lies).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A request seen by [`FakeServer`].
pub struct Request {
    /// The request target (`/v2/...`).
    pub path: String,
    /// The `Authorization` header, empty when absent.
    pub authorization: String,
}

/// A response of [`FakeServer`]: status line, extra headers, body.
pub struct Response {
    /// Status code and reason, e.g. `404 Not Found`.
    pub status: &'static str,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with no extra headers.
    pub fn new(status: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    /// Adds a header.
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
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Starts serving on a free port.
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
