//! Content digests (`sha256:<hex>`) and a reader that verifies a blob's size
//! and digest as it streams by.
//!
//! Only sha256 is supported: it is what every registry, `docker save` and
//! the OCI image layout use in practice. Other algorithms are rejected with a
//! clear error instead of being silently skipped.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

/// Length of a sha256 digest in lowercase hex.
const SHA256_HEX_LEN: usize = 64;

/// Errors parsing a digest string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string is not `ALGORITHM:HEX`, or the hex part is malformed.
    #[error("invalid digest {input:?}: {reason}")]
    Format {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A well-formed digest with an algorithm other than sha256.
    #[error("unsupported digest algorithm {algorithm:?} in {input:?}: only sha256 is supported")]
    UnsupportedAlgorithm {
        /// The string given.
        input: String,
        /// Its algorithm part.
        algorithm: String,
    },
}

/// A sha256 content digest, printed as `sha256:<64 lowercase hex digits>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// 64 lowercase hex digits.
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 hex>` (lowercase hex, as the OCI spec requires).
    pub fn parse(input: &str) -> Result<Digest, DigestError> {
        let format = |reason: &str| DigestError::Format {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let Some((algorithm, hex)) = input.split_once(':') else {
            return Err(format(
                "expected ALGORITHM:HEX such as sha256:<64 hex digits>",
            ));
        };
        if algorithm.is_empty()
            || !algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        {
            return Err(format(
                "the algorithm must be lowercase letters and digits, e.g. sha256",
            ));
        }
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                input: input.to_string(),
                algorithm: algorithm.to_string(),
            });
        }
        Digest::from_sha256_hex(hex).map_err(|_| {
            format(&format!(
                "a sha256 digest needs {SHA256_HEX_LEN} lowercase hex digits, found {:?}",
                hex
            ))
        })
    }

    /// Builds a digest from the 64 lowercase hex digits of a sha256 hash.
    pub fn from_sha256_hex(hex: &str) -> Result<Digest, DigestError> {
        if hex.len() != SHA256_HEX_LEN
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::Format {
                input: hex.to_string(),
                reason: format!("expected {SHA256_HEX_LEN} lowercase hex digits"),
            });
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The sha256 digest of `data`.
    pub fn of_bytes(data: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(data);
        h.finish()
    }

    /// The algorithm name, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The same digest as an [`oci_spec::image::Digest`].
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        oci_spec::image::Sha256Digest::from_str(&self.hex)
            .expect("a validated sha256 hex string is a valid oci-spec digest")
            .into()
    }

    /// Converts an [`oci_spec::image::Digest`], rejecting algorithms other than sha256.
    pub fn from_oci(d: &oci_spec::image::Digest) -> Result<Digest, DigestError> {
        Digest::parse(d.as_ref())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 hashing that ends in a [`Digest`]; also an [`io::Write`] sink.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Hasher {
        Hasher {
            inner: Sha256::new(),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let out = self.inner.finalize();
        let mut hex = String::with_capacity(SHA256_HEX_LEN);
        for b in out {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Digest { hex }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a [`VerifyingReader`] found wrong. It is the payload of the
/// `io::Error` (kind `InvalidData`) the reader returns, so callers can
/// recover it with `err.get_ref().and_then(|e| e.downcast_ref::<VerifyError>())`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The blob ended with a different sha256 than expected.
    #[error("{what}: digest mismatch: expected {expected}, actual {actual}")]
    Digest {
        /// The blob, e.g. `layer sha256:...`.
        what: String,
        /// The digest it should have had.
        expected: Digest,
        /// The digest of the bytes read.
        actual: Digest,
    },
    /// The blob ended before the expected size.
    #[error("{what}: size mismatch: expected {expected} bytes, got only {actual} (truncated)")]
    Short {
        /// The blob.
        what: String,
        /// The expected size.
        expected: u64,
        /// The bytes read before EOF.
        actual: u64,
    },
    /// The blob holds more than the expected size.
    #[error("{what}: size mismatch: expected {expected} bytes, but more data follows")]
    Long {
        /// The blob.
        what: String,
        /// The expected size.
        expected: u64,
    },
}

/// Wraps a reader of a blob, hashing and counting the bytes. At EOF it
/// checks the digest (and size, if known); it fails as soon as more than the
/// expected size has been read. Failures are `io::Error`s of kind
/// [`io::ErrorKind::InvalidData`] carrying a [`VerifyError`].
///
/// The check only happens when EOF is reached: callers that stop early (a
/// tar reader stops at the end-of-archive marker) must drain the rest, e.g.
/// with `io::copy(&mut r, &mut io::sink())`.
pub struct VerifyingReader<R: Read> {
    inner: R,
    what: String,
    expected: Digest,
    expected_size: Option<u64>,
    hasher: Option<Hasher>,
    count: u64,
    /// Set once EOF was reached and verified (Ok) or failed (Err).
    outcome: Option<Result<(), VerifyError>>,
    /// Excess data was seen; reported by the next read.
    pending: Option<VerifyError>,
}

impl<R: Read> VerifyingReader<R> {
    /// Verifies `inner` against `expected` (and `expected_size`, if known).
    /// `what` names the blob in errors, e.g. `"layer 2 (sha256:...)"`.
    pub fn new(
        inner: R,
        expected: Digest,
        expected_size: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        VerifyingReader {
            inner,
            what: what.into(),
            expected,
            expected_size,
            hasher: Some(Hasher::new()),
            count: 0,
            outcome: None,
            pending: None,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.count
    }

    /// Whether EOF was reached and the blob matched.
    pub fn verified(&self) -> bool {
        matches!(self.outcome, Some(Ok(())))
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fail(&mut self, e: VerifyError) -> io::Error {
        self.outcome = Some(Err(e.clone()));
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    fn at_eof(&mut self) -> io::Result<()> {
        if let Some(size) = self.expected_size {
            if self.count < size {
                let e = VerifyError::Short {
                    what: self.what.clone(),
                    expected: size,
                    actual: self.count,
                };
                return Err(self.fail(e));
            }
        }
        let actual = self.hasher.take().unwrap_or_default().finish();
        if actual != self.expected {
            let e = VerifyError::Digest {
                what: self.what.clone(),
                expected: self.expected.clone(),
                actual,
            };
            return Err(self.fail(e));
        }
        self.outcome = Some(Ok(()));
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.pending.take() {
            return Err(self.fail(e));
        }
        match &self.outcome {
            Some(Ok(())) => return Ok(0),
            Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())),
            None => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // Read at most one byte past the expected size: enough to notice excess data.
        let limit = match self.expected_size {
            Some(size) => usize::try_from(size.saturating_sub(self.count).saturating_add(1))
                .unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let len = buf.len().min(limit);
        let n = self.inner.read(&mut buf[..len])?;
        if n == 0 {
            self.at_eof()?;
            return Ok(0);
        }
        let mut n = n;
        if let Some(size) = self.expected_size {
            if self.count + n as u64 > size {
                let e = VerifyError::Long {
                    what: self.what.clone(),
                    expected: size,
                };
                if self.count == size {
                    return Err(self.fail(e));
                }
                // Hand out the bytes up to the expected size; the next read fails.
                n = (size - self.count) as usize;
                self.pending = Some(e);
            }
        }
        self.count += n as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn verify_error(e: &io::Error) -> &VerifyError {
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        e.get_ref()
            .and_then(|e| e.downcast_ref::<VerifyError>())
            .expect("VerifyError payload")
    }

    #[test]
    fn parse_and_display() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(format!("{d:?}"), EMPTY);
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d, Digest::of_bytes(b""));
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::from_oci(&d.to_oci()).unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:",
            "sha256:abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855a",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            let e = Digest::parse(bad).unwrap_err();
            assert!(matches!(e, DigestError::Format { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let e = Digest::parse("sha512:abcd").unwrap_err();
        assert!(matches!(e, DigestError::UnsupportedAlgorithm { .. }));
        assert!(e.to_string().contains("only sha256"), "{e}");
    }

    #[test]
    fn verifying_reader_accepts_matching_blob() {
        let data = vec![7u8; 100_000];
        let d = Digest::of_bytes(&data);
        let mut r = VerifyingReader::new(&data[..], d.clone(), Some(100_000), "blob");
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert!(r.verified());
        assert_eq!(r.bytes_read(), 100_000);
        // Unknown size works too.
        let mut r = VerifyingReader::new(&data[..], d, None, "blob");
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert!(r.verified());
    }

    #[test]
    fn verifying_reader_rejects_wrong_digest() {
        let mut r = VerifyingReader::new(
            &b"hello"[..],
            Digest::of_bytes(b"other"),
            Some(5),
            "layer 1",
        );
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        let v = verify_error(&e);
        assert!(matches!(v, VerifyError::Digest { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("layer 1") && msg.contains(&Digest::of_bytes(b"hello").to_string()),
            "{msg}"
        );
        // The failure is sticky.
        assert!(r.read(&mut [0u8; 4]).is_err());
        assert!(!r.verified());
    }

    #[test]
    fn verifying_reader_rejects_short_and_long() {
        let d = Digest::of_bytes(b"hello");
        let mut r = VerifyingReader::new(&b"hell"[..], d.clone(), Some(5), "config");
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(
            matches!(
                verify_error(&e),
                VerifyError::Short {
                    expected: 5,
                    actual: 4,
                    ..
                }
            ),
            "{e}"
        );

        // Excess data fails before EOF, as soon as the size is passed.
        let long = vec![1u8; 1 << 20];
        let mut r = VerifyingReader::new(&long[..], d, Some(5), "config");
        let mut buf = [0u8; 4096];
        let n = r.read(&mut buf).unwrap();
        assert_eq!(n, 5);
        let e = r.read(&mut buf).unwrap_err();
        assert!(
            matches!(verify_error(&e), VerifyError::Long { expected: 5, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("config"));
    }

    #[test]
    fn hasher_as_writer() {
        let mut h = Hasher::new();
        io::copy(&mut &b"abc"[..], &mut h).unwrap();
        assert_eq!(
            h.finish().hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
