//! Layer blobs: from a (usually compressed) blob stream to an uncompressed
//! tar stream.
//!
//! OCI media types say exactly how a layer is compressed and are trusted.
//! Docker's types (`...rootfs.diff.tar.gzip` is also used for uncompressed
//! layers by some tools) and untyped docker-archive layers are sniffed by
//! their magic bytes instead.
//!
//! Errors in the compressed data (corrupt or truncated) and verification
//! failures of the underlying blob (see [`crate::digest::VerifyingReader`])
//! surface as `io::Error`s from `read` on the returned stream. Read the stream
//! to EOF (see [`drain`]) even after the tar end-of-archive marker, so that
//! the blob's digest is checked.

use std::io::{self, Read};

/// OCI layer media types.
pub mod media_types {
    /// Uncompressed tar.
    pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// gzip-compressed tar.
    pub const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// zstd-compressed tar.
    pub const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Uncompressed tar with distribution restrictions (deprecated by OCI, still seen).
    pub const ND_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    /// gzip, with distribution restrictions.
    pub const ND_TAR_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// zstd, with distribution restrictions.
    pub const ND_TAR_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    /// Docker schema2 layer (gzip in registries; sniffed).
    pub const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker schema2 foreign layer (sniffed).
    pub const DOCKER_FOREIGN_TAR_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// Docker uncompressed layer, as written by some tools (sniffed).
    pub const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
}

/// Errors opening a layer stream.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The media type is not a layer type minivm knows.
    #[error("unsupported layer media type {media_type:?} (expected an OCI or Docker tar layer, optionally gzip or zstd)")]
    UnknownMediaType {
        /// The media type given.
        media_type: String,
    },
    /// The data is compressed with something other than gzip or zstd.
    #[error("layer ({media_type}) is compressed with {format}, which is not supported (only gzip and zstd are)")]
    UnsupportedCompression {
        /// The media type given.
        media_type: String,
        /// The compression recognised from the magic bytes.
        format: &'static str,
    },
    /// Reading the first bytes (to sniff them) or setting up a decoder failed.
    #[error("layer ({media_type}): {source}")]
    Io {
        /// The media type given.
        media_type: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => media_types::TAR,
            Compression::Gzip => media_types::TAR_GZIP,
            Compression::Zstd => media_types::TAR_ZSTD,
        }
    }
}

/// What a media type says about compression: `Ok(Some(c))` for OCI types,
/// `Ok(None)` for types whose compression must be sniffed, an error for
/// types that are not layers.
pub fn compression_of(media_type: &str) -> Result<Option<Compression>, LayerError> {
    use media_types::*;
    match media_type {
        TAR | ND_TAR => Ok(Some(Compression::None)),
        TAR_GZIP | ND_TAR_GZIP => Ok(Some(Compression::Gzip)),
        TAR_ZSTD | ND_TAR_ZSTD => Ok(Some(Compression::Zstd)),
        DOCKER_TAR_GZIP | DOCKER_FOREIGN_TAR_GZIP | DOCKER_TAR => Ok(None),
        _ => Err(LayerError::UnknownMediaType {
            media_type: media_type.to_string(),
        }),
    }
}

/// Whether `media_type` is a layer type [`decompress`] accepts.
pub fn is_layer_media_type(media_type: &str) -> bool {
    compression_of(media_type).is_ok()
}

/// The compression (or other format) recognised from a blob's first bytes.
/// Anything unrecognised is taken to be a plain tar.
pub fn sniff(prefix: &[u8]) -> Result<Compression, &'static str> {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err("xz")
    } else if prefix.starts_with(b"BZh") {
        Err("bzip2")
    } else {
        Ok(Compression::None)
    }
}

/// Turns a layer blob into its uncompressed tar stream, per `media_type`
/// (sniffing the magic bytes where the type is ambiguous).
pub fn decompress<'a>(
    media_type: &str,
    blob: Box<dyn Read + Send + 'a>,
) -> Result<Box<dyn Read + Send + 'a>, LayerError> {
    let (compression, blob) = match compression_of(media_type)? {
        Some(c) => (c, blob),
        None => {
            let (prefix, blob) = peek(blob, 6).map_err(|source| LayerError::Io {
                media_type: media_type.to_string(),
                source,
            })?;
            let c = sniff(&prefix).map_err(|format| LayerError::UnsupportedCompression {
                media_type: media_type.to_string(),
                format,
            })?;
            (c, blob)
        }
    };
    decoder(compression, blob).map_err(|source| LayerError::Io {
        media_type: media_type.to_string(),
        source,
    })
}

/// Wraps `blob` in a streaming decoder for `compression`.
pub fn decoder<'a>(
    compression: Compression,
    blob: Box<dyn Read + Send + 'a>,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => blob,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
    })
}

/// Reads up to `n` bytes from the start of `r` and returns them together
/// with a reader that yields the whole stream again.
pub fn peek<'a>(
    mut r: Box<dyn Read + Send + 'a>,
    n: usize,
) -> io::Result<(Vec<u8>, Box<dyn Read + Send + 'a>)> {
    let mut prefix = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut prefix[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    prefix.truncate(got);
    let again = io::Cursor::new(prefix.clone()).chain(r);
    Ok((prefix, Box::new(again)))
}

/// Reads `r` to EOF, discarding the data; returns the number of bytes. Use it
/// after a tar reader stopped at the end-of-archive marker, so that trailing
/// data is consumed and the blob's digest verified.
pub fn drain<R: Read + ?Sized>(r: &mut R) -> io::Result<u64> {
    io::copy(r, &mut io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let data = vec![b'x'; 50_000];
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "dir/file", &data[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn read_all(media_type: &str, blob: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut r =
            decompress(media_type, Box::new(io::Cursor::new(blob))).map_err(io::Error::other)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_every_media_type() {
        use media_types::*;
        let tar = tar_bytes();
        for (mt, blob) in [
            (TAR, tar.clone()),
            (ND_TAR, tar.clone()),
            (TAR_GZIP, gzip(&tar)),
            (ND_TAR_GZIP, gzip(&tar)),
            (TAR_ZSTD, zstd(&tar)),
            (ND_TAR_ZSTD, zstd(&tar)),
            (DOCKER_TAR_GZIP, gzip(&tar)),
            (DOCKER_TAR_GZIP, tar.clone()),
            (DOCKER_TAR_GZIP, zstd(&tar)),
            (DOCKER_FOREIGN_TAR_GZIP, gzip(&tar)),
            (DOCKER_TAR, tar.clone()),
        ] {
            assert_eq!(
                read_all(mt, blob).unwrap_or_else(|e| panic!("{mt}: {e}")),
                tar,
                "{mt}"
            );
        }
    }

    #[test]
    fn multi_member_gzip_and_multi_frame_zstd() {
        let tar = tar_bytes();
        let (a, b) = tar.split_at(10_000);
        let mut gz = gzip(a);
        gz.extend(gzip(b));
        assert_eq!(read_all(media_types::TAR_GZIP, gz).unwrap(), tar);
        let mut zs = zstd(a);
        zs.extend(zstd(b));
        assert_eq!(read_all(media_types::TAR_ZSTD, zs).unwrap(), tar);
    }

    #[test]
    fn unknown_media_type_is_named() {
        let Err(e) = decompress("application/vnd.example.thing", Box::new(io::empty())) else {
            panic!()
        };
        assert!(matches!(e, LayerError::UnknownMediaType { .. }));
        assert!(
            e.to_string().contains("application/vnd.example.thing"),
            "{e}"
        );
        assert!(!is_layer_media_type(
            "application/vnd.oci.image.config.v1+json"
        ));
    }

    #[test]
    fn unsupported_compression_is_named() {
        let xz = vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2];
        let Err(e) = decompress(media_types::DOCKER_TAR_GZIP, Box::new(io::Cursor::new(xz))) else {
            panic!()
        };
        assert!(e.to_string().contains("xz"), "{e}");
    }

    #[test]
    fn corrupt_and_truncated_data_are_read_errors() {
        let tar = tar_bytes();
        let gz = gzip(&tar);
        let zs = zstd(&tar);
        // Truncated.
        for (mt, blob) in [(media_types::TAR_GZIP, &gz), (media_types::TAR_ZSTD, &zs)] {
            let cut = blob[..blob.len() / 2].to_vec();
            assert!(
                read_all(mt, cut).is_err(),
                "{mt}: truncated data read without error"
            );
            let cut = blob[..blob.len() - 4].to_vec();
            assert!(
                read_all(mt, cut).is_err(),
                "{mt}: data missing its trailer read without error"
            );
        }
        // Corrupt in the middle.
        for (mt, blob) in [(media_types::TAR_GZIP, &gz), (media_types::TAR_ZSTD, &zs)] {
            let mut bad = blob.clone();
            let mid = bad.len() / 2;
            for b in &mut bad[mid..mid + 16] {
                *b ^= 0x5a;
            }
            assert!(
                read_all(mt, bad).is_err(),
                "{mt}: corrupt data read without error"
            );
        }
        // Not compressed at all although the type says so.
        assert!(read_all(media_types::TAR_GZIP, tar.clone()).is_err());
        assert!(read_all(media_types::TAR_ZSTD, tar).is_err());
        // Empty blob for a compressed type.
        assert!(read_all(media_types::TAR_GZIP, Vec::new()).is_err());
    }

    #[test]
    fn sniff_and_peek() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Ok(Compression::Gzip));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Ok(Compression::Zstd));
        assert_eq!(sniff(b"BZh9"), Err("bzip2"));
        assert_eq!(sniff(b""), Ok(Compression::None));
        let (p, mut r) = peek(Box::new(io::Cursor::new(b"abc".to_vec())), 6).unwrap();
        assert_eq!(p, b"abc");
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abc");
        assert_eq!(drain(&mut io::Cursor::new(vec![0u8; 1000])).unwrap(), 1000);
        assert_eq!(Compression::Zstd.oci_media_type(), media_types::TAR_ZSTD);
    }
}
