//! Writing test images: layer tars, blobs, OCI layouts and archives, and
//! `docker save` archives.

use super::{Compression, Meta, RawEntry, TestEntry, TestImage, TestImageError};
use crate::digest::Digest;
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, TestImageError>;

/// Largest value the 8-byte octal uid/gid fields hold.
const MAX_OCTAL_ID: u64 = 0o7_777_777;

fn put_name(field: &mut [u8], name: &[u8]) {
    let n = name.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&name[..n]);
}

fn append_raw(b: &mut tar::Builder<Vec<u8>>, r: &RawEntry) -> std::io::Result<()> {
    let mut pax: Vec<(String, Vec<u8>)> = r.pax.clone();
    if r.path.len() > 100 {
        pax.push(("path".to_string(), r.path.clone()));
    }
    if r.link_name.len() > 100 {
        pax.push(("linkpath".to_string(), r.link_name.clone()));
    }
    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(r.entry_type));
    h.set_mode(r.mode);
    h.set_uid(r.uid);
    h.set_gid(r.gid);
    h.set_mtime(r.mtime);
    h.set_size(r.data.len() as u64);
    let old = h.as_old_mut();
    put_name(&mut old.name, &r.path);
    put_name(&mut old.linkname, &r.link_name);
    h.set_cksum();
    b.append(&h, &r.data[..])
}

fn append_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    meta: &Meta,
    data: &[u8],
    link: Option<&str>,
    dev: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(meta.uid);
    h.set_gid(meta.gid);
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_size(data.len() as u64);
    if let Some((major, minor)) = dev {
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
    }
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if meta.mtime_nsec != 0 || meta.mtime < 0 {
        pax.push((
            "mtime".to_string(),
            format!("{}.{:09}", meta.mtime, meta.mtime_nsec).into_bytes(),
        ));
    }
    if meta.uid > MAX_OCTAL_ID {
        pax.push(("uid".to_string(), meta.uid.to_string().into_bytes()));
    }
    if meta.gid > MAX_OCTAL_ID {
        pax.push(("gid".to_string(), meta.gid.to_string().into_bytes()));
    }
    for (k, v) in &meta.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    let pax_path = meta.pax_names && path.len() > 100;
    let pax_link = meta.pax_names && link.is_some_and(|l| l.len() > 100);
    if pax_path {
        pax.push(("path".to_string(), path.as_bytes().to_vec()));
    }
    if pax_link {
        pax.push((
            "linkpath".to_string(),
            link.unwrap_or_default().as_bytes().to_vec(),
        ));
    }
    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    if meta.pax_names {
        // Names go in the header (truncated when a PAX record has the full one).
        let old = h.as_old_mut();
        put_name(&mut old.name, path.as_bytes());
        put_name(&mut old.linkname, link.unwrap_or_default().as_bytes());
        h.set_cksum();
        return b.append(&h, data);
    }
    match link {
        Some(target) => b.append_link(&mut h, path, target),
        None => b.append_data(&mut h, path, data),
    }
}

/// The uncompressed tar of one layer.
pub fn layer_tar(entries: &[TestEntry]) -> std::io::Result<Vec<u8>> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            TestEntry::Dir { path, meta } => {
                append_entry(&mut b, T::Directory, path, meta, &[], None, None)?
            }
            TestEntry::File { path, data, meta } => {
                append_entry(&mut b, T::Regular, path, meta, data, None, None)?
            }
            TestEntry::Symlink { path, target, meta } => {
                append_entry(&mut b, T::Symlink, path, meta, &[], Some(target), None)?
            }
            TestEntry::Hardlink { path, target, meta } => {
                append_entry(&mut b, T::Link, path, meta, &[], Some(target), None)?
            }
            TestEntry::CharDev {
                path,
                major,
                minor,
                meta,
            } => append_entry(
                &mut b,
                T::Char,
                path,
                meta,
                &[],
                None,
                Some((*major, *minor)),
            )?,
            TestEntry::BlockDev {
                path,
                major,
                minor,
                meta,
            } => append_entry(
                &mut b,
                T::Block,
                path,
                meta,
                &[],
                None,
                Some((*major, *minor)),
            )?,
            TestEntry::Fifo { path, meta } => {
                append_entry(&mut b, T::Fifo, path, meta, &[], None, None)?
            }
            TestEntry::Whiteout(_) | TestEntry::Opaque(_) => {
                let p = String::from_utf8(e.tar_path()).expect("whiteout paths are UTF-8");
                append_entry(
                    &mut b,
                    T::Regular,
                    &p,
                    &Meta::with_mode(0o644),
                    &[],
                    None,
                    None,
                )?
            }
            TestEntry::Raw(r) => append_raw(&mut b, r)?,
        }
    }
    b.into_inner()
}

/// Compresses a tar per `compression`.
pub fn compress(tar: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(tar.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar)?;
            e.finish()
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 3),
    }
}

/// One built layer.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The blob (compressed per the build's compression).
    pub blob: Vec<u8>,
    /// sha256 of `tar` (the config's diff_id).
    pub diff_id: Digest,
    /// sha256 of `blob`.
    pub digest: Digest,
    /// The OCI media type.
    pub media_type: &'static str,
}

/// An image built in memory: blobs and their digests.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Layers, lowest first.
    pub layers: Vec<BuiltLayer>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// Its digest.
    pub config_digest: Digest,
    /// The OCI manifest JSON.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub manifest_digest: Digest,
}

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON values serialize")
}

impl TestImage {
    /// The config JSON for these diff_ids.
    pub fn config_json(&self, diff_ids: &[Digest]) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        config.insert("Env".into(), json!(self.env));
        if let Some(v) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(v));
        }
        if let Some(v) = &self.cmd {
            config.insert("Cmd".into(), json!(v));
        }
        if let Some(v) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(v));
        }
        if let Some(v) = &self.user {
            config.insert("User".into(), json!(v));
        }
        let history: Vec<_> = (0..diff_ids.len())
            .map(|i| json!({"created": "2023-11-14T22:13:20Z", "created_by": format!("minivm testutil layer {i}")}))
            .collect();
        json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
            "history": history,
        })
    }

    /// Builds every blob in memory.
    pub fn build(&self, compression: Compression) -> Result<BuiltImage> {
        let mut layers = Vec::new();
        for (i, entries) in self.layers.iter().enumerate() {
            let tar =
                layer_tar(entries).map_err(TestImageError::io(format!("writing layer {i}")))?;
            let blob = compress(&tar, compression)
                .map_err(TestImageError::io(format!("compressing layer {i}")))?;
            layers.push(BuiltLayer {
                diff_id: Digest::of_bytes(&tar),
                digest: Digest::of_bytes(&blob),
                media_type: compression.oci_media_type(),
                tar,
                blob,
            });
        }
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config = json_bytes(&self.config_json(&diff_ids));
        let config_digest = Digest::of_bytes(&config);
        let manifest = json_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": crate::source::media_types::OCI_MANIFEST,
            "config": {
                "mediaType": crate::source::media_types::OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        }));
        let manifest_digest = Digest::of_bytes(&manifest);
        Ok(BuiltImage {
            layers,
            config,
            config_digest,
            manifest,
            manifest_digest,
        })
    }
}

impl BuiltImage {
    /// Every blob: layers, config, manifest.
    pub fn blobs(&self) -> Vec<(&Digest, &[u8])> {
        let mut v: Vec<(&Digest, &[u8])> = self
            .layers
            .iter()
            .map(|l| (&l.digest, &l.blob[..]))
            .collect();
        v.push((&self.config_digest, &self.config));
        v.push((&self.manifest_digest, &self.manifest));
        v
    }

    /// The `index.json` descriptor of the manifest, tagged `tag`.
    pub fn manifest_descriptor(&self, tag: Option<&str>) -> serde_json::Value {
        let mut d = json!({
            "mediaType": crate::source::media_types::OCI_MANIFEST,
            "digest": self.manifest_digest.to_string(),
            "size": self.manifest.len(),
        });
        if let Some(t) = tag {
            d["annotations"] = json!({"org.opencontainers.image.ref.name": t});
        }
        d
    }

    /// Writes the blobs, `oci-layout` and an `index.json` entry into `dir`.
    pub fn write_layout(&self, dir: &Path, tag: Option<&str>) -> Result<()> {
        for (_, data) in self.blobs() {
            write_blob(dir, data)?;
        }
        set_index_entry(dir, tag, self.manifest_descriptor(tag))
    }

    /// Writes a tar holding the layout (`oci-layout`, `index.json`, `blobs/sha256/...`).
    pub fn write_layout_archive(&self, file: &Path, tag: Option<&str>) -> Result<()> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": crate::source::media_types::OCI_INDEX,
            "manifests": [self.manifest_descriptor(tag)],
        });
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                json_bytes(&json!({"imageLayoutVersion": "1.0.0"})),
            ),
            ("index.json".into(), json_bytes(&index)),
        ];
        for (d, data) in self.blobs() {
            files.push((format!("blobs/sha256/{}", d.hex()), data.to_vec()));
        }
        write_tar(file, &["blobs", "blobs/sha256"], &files, &[])
    }
}

/// Writes a tar file of directories, files and symlinks (`(path, target)`).
fn write_tar(
    file: &Path,
    dirs: &[&str],
    files: &[(String, Vec<u8>)],
    symlinks: &[(String, String)],
) -> Result<()> {
    let mut entries: Vec<TestEntry> = dirs.iter().map(|d| TestEntry::dir(*d)).collect();
    entries.extend(
        files
            .iter()
            .map(|(p, d)| TestEntry::file(p.clone(), d.clone())),
    );
    entries.extend(
        symlinks
            .iter()
            .map(|(p, t)| TestEntry::symlink(p.clone(), t.clone())),
    );
    let tar =
        layer_tar(&entries).map_err(TestImageError::io(format!("building {}", file.display())))?;
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .map_err(TestImageError::io(format!("creating {}", parent.display())))?;
    }
    std::fs::write(file, tar).map_err(TestImageError::io(format!("writing {}", file.display())))
}

/// Where a blob lives in a layout.
pub fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs").join("sha256").join(digest.hex())
}

/// Writes `data` as a blob of the layout at `dir` (creating the layout's
/// directories and `oci-layout` file). Returns its digest.
pub fn write_blob(dir: &Path, data: &[u8]) -> Result<Digest> {
    let d = Digest::of_bytes(data);
    let p = blob_path(dir, &d);
    std::fs::create_dir_all(p.parent().expect("blob paths have a parent"))
        .map_err(TestImageError::io(format!("creating {}", dir.display())))?;
    std::fs::write(&p, data).map_err(TestImageError::io(format!("writing {}", p.display())))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(TestImageError::io(format!("writing {}", layout.display())))?;
    }
    Ok(d)
}

/// Adds `descriptor` to the layout's `index.json`, replacing the entry with
/// the same tag (when `tag` is Some) and creating the index if needed.
pub fn set_index_entry(dir: &Path, tag: Option<&str>, descriptor: serde_json::Value) -> Result<()> {
    let path = dir.join("index.json");
    let mut index = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| TestImageError::Other(format!("{}: {e}", path.display())))?,
        Err(_) => {
            json!({"schemaVersion": 2, "mediaType": crate::source::media_types::OCI_INDEX, "manifests": []})
        }
    };
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| TestImageError::Other("index.json lacks manifests".into()))?;
    if let Some(t) = tag {
        manifests
            .retain(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(t));
    }
    manifests.push(descriptor);
    std::fs::write(&path, json_bytes(&index))
        .map_err(TestImageError::io(format!("writing {}", path.display())))
}

/// Layouts of `docker save` archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerFormat {
    /// Classic: `<id>/layer.tar` uncompressed, `<config hex>.json`, `repositories`;
    /// a layer repeated in one image is written once and then as a symlink.
    Legacy,
    /// Like `Legacy` but with gzip-compressed layer files (as some tools write).
    LegacyGzip,
    /// Docker 25+: an OCI layout (`blobs/sha256`, `index.json`, `oci-layout`) plus `manifest.json`.
    Oci,
}

/// Writes a `docker save` archive holding several images, each with its
/// `RepoTags`. Returns each image's config digest (its Docker image ID).
pub fn write_docker_archive_images(
    file: &Path,
    images: &[(&TestImage, &[&str])],
    format: DockerFormat,
) -> Result<Vec<Digest>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut symlinks: Vec<(String, String)> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut manifest = Vec::new();
    let mut index = Vec::new();
    let mut repositories = serde_json::Map::new();
    let mut ids = Vec::new();
    let mut written: HashMap<String, ()> = HashMap::new();
    let mut add = |files: &mut Vec<(String, Vec<u8>)>, path: String, data: Vec<u8>| {
        if written.insert(path.clone(), ()).is_none() {
            files.push((path, data));
        }
    };
    for (image, tags) in images {
        let compression = if format == DockerFormat::LegacyGzip {
            Compression::Gzip
        } else {
            Compression::None
        };
        let built = image.build(compression)?;
        let mut layer_paths = Vec::new();
        let config_path = match format {
            DockerFormat::Oci => {
                for (d, data) in built.blobs() {
                    add(
                        &mut files,
                        format!("blobs/sha256/{}", d.hex()),
                        data.to_vec(),
                    );
                }
                for l in &built.layers {
                    layer_paths.push(format!("blobs/sha256/{}", l.digest.hex()));
                }
                let mut desc = built
                    .manifest_descriptor(tags.first().map(|t| t.rsplit(':').next().unwrap_or(t)));
                if let Some(t) = tags.first() {
                    let name = crate::reference::normalize_docker_tag_name(t)
                        .map_err(TestImageError::Other)?;
                    desc["annotations"]["io.containerd.image.name"] = json!(name);
                }
                index.push(desc);
                format!("blobs/sha256/{}", built.config_digest.hex())
            }
            DockerFormat::Legacy | DockerFormat::LegacyGzip => {
                let mut first_by_diff: HashMap<Digest, String> = HashMap::new();
                let mut parent = String::new();
                for (i, l) in built.layers.iter().enumerate() {
                    let id = Digest::of_bytes(format!("{parent}\n{i}\n{}", l.diff_id).as_bytes())
                        .hex()
                        .to_string();
                    dirs.push(id.clone());
                    let path = format!("{id}/layer.tar");
                    add(&mut files, format!("{id}/VERSION"), b"1.0".to_vec());
                    add(
                        &mut files,
                        format!("{id}/json"),
                        json_bytes(&json!({"id": id, "parent": parent})),
                    );
                    match first_by_diff.get(&l.diff_id) {
                        Some(first) => symlinks.push((path.clone(), format!("../{first}"))),
                        None => {
                            first_by_diff.insert(l.diff_id.clone(), path.clone());
                            add(&mut files, path.clone(), l.blob.clone());
                        }
                    }
                    layer_paths.push(path);
                    parent = id;
                }
                for t in tags.iter() {
                    if let Some((repo, tag)) =
                        t.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'))
                    {
                        let entry = repositories
                            .entry(repo.to_string())
                            .or_insert_with(|| json!({}));
                        entry[tag] = json!(parent);
                    }
                }
                format!("{}.json", built.config_digest.hex())
            }
        };
        add(&mut files, config_path.clone(), built.config.clone());
        manifest.push(json!({"Config": config_path, "RepoTags": tags, "Layers": layer_paths}));
        ids.push(built.config_digest.clone());
    }
    files.push(("manifest.json".into(), json_bytes(&json!(manifest))));
    let mut top_dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    match format {
        DockerFormat::Oci => {
            files.push((
                "oci-layout".into(),
                json_bytes(&json!({"imageLayoutVersion": "1.0.0"})),
            ));
            let index = json!({"schemaVersion": 2, "mediaType": crate::source::media_types::OCI_INDEX, "manifests": index});
            files.push(("index.json".into(), json_bytes(&index)));
            top_dirs.extend(["blobs", "blobs/sha256"]);
        }
        _ => files.push((
            "repositories".into(),
            json_bytes(&serde_json::Value::Object(repositories)),
        )),
    }
    top_dirs.sort_unstable();
    top_dirs.dedup();
    write_tar(file, &top_dirs, &files, &symlinks)?;
    Ok(ids)
}
