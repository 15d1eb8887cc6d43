//! Tests of layer flattening, with tar streams built in memory.

use super::*;
use crate::walk::WalkError;
use std::collections::HashMap;

/// Keeps data in memory and records frees.
#[derive(Default)]
struct MemSink {
    data: HashMap<u64, Vec<u8>>,
    next: u64,
    freed: Vec<u64>,
}

impl DataSink for MemSink {
    fn write_data(&mut self, r: &mut dyn Read, len: u64) -> Result<DataId, SinkError> {
        let mut buf = Vec::new();
        r.take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(format!("short read: {} of {len} bytes", buf.len()).into());
        }
        self.next += 1;
        self.data.insert(self.next, buf);
        Ok(DataId(self.next))
    }
    fn free_data(&mut self, id: DataId) {
        self.data.remove(&id.0).expect("double free");
        self.freed.push(id.0);
    }
}

/// One tar entry, written with raw header control so hostile names survive.
#[derive(Clone)]
enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static [u8]),
    Sym(&'static str, &'static str),
    Link(&'static str, &'static str),
    Fifo(&'static str),
    Chr(&'static str, u32, u32),
}

fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_mtime(1_700_000_000);
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (name, kind, data, link, mode): (&str, _, &[u8], Option<&str>, u32) = match e {
            E::Dir(p, m) => (p, tar::EntryType::Directory, b"", None, *m),
            E::File(p, d) => (p, tar::EntryType::Regular, d, None, 0o644),
            E::Sym(p, t) => (p, tar::EntryType::Symlink, b"", Some(t), 0o777),
            E::Link(p, t) => (p, tar::EntryType::Link, b"", Some(t), 0o644),
            E::Fifo(p) => (p, tar::EntryType::Fifo, b"", None, 0o600),
            E::Chr(p, _, _) => (p, tar::EntryType::Char, b"", None, 0o600),
        };
        let mut h = header(name.as_bytes(), kind, data.len() as u64, mode);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        if let E::Chr(_, maj, min) = e {
            h.set_device_major(*maj).unwrap();
            h.set_device_minor(*min).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn flatten(layers: &[Vec<u8>]) -> Result<(Tree, MemSink), FlattenError> {
    let mut sink = MemSink::default();
    let mut f = Flattener::new(&mut sink);
    for (i, l) in layers.iter().enumerate() {
        f.apply_layer(&format!("layer{i}"), &mut &l[..])?;
    }
    let (tree, _) = f.finish();
    Ok((tree, sink))
}

fn lookup(t: &Tree, path: &str) -> Option<NodeId> {
    let mut id = t.root;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        id = *t.children(id)?.get(c.as_bytes())?;
    }
    Some(id)
}

fn file_data(t: &Tree, s: &MemSink, path: &str) -> Option<Vec<u8>> {
    match &t.nodes[lookup(t, path)?].kind {
        NodeKind::File { data: Some(d), .. } => Some(s.data[&d.0].clone()),
        NodeKind::File { data: None, .. } => Some(vec![]),
        _ => None,
    }
}

#[test]
fn layers_merge_with_metadata() {
    let l0 = tar_of(&[
        E::Dir("etc/", 0o755),
        E::File("etc/a", b"one"),
        E::Sym("etc/l", "a"),
    ]);
    let l1 = tar_of(&[
        E::File("etc/a", b"two"),
        E::File("usr/bin/x", b"x"),
        E::Dir("etc/", 0o700),
    ]);
    let (t, s) = flatten(&[l0, l1]).unwrap();
    assert_eq!(file_data(&t, &s, "etc/a").unwrap(), b"two");
    assert_eq!(file_data(&t, &s, "usr/bin/x").unwrap(), b"x");
    let etc = &t.nodes[lookup(&t, "etc").unwrap()];
    assert_eq!(
        (etc.meta.perm, etc.meta.uid, etc.meta.gid, etc.meta.mtime),
        (0o700, 1000, 100, 1_700_000_000)
    );
    // Implicit parents: root-owned 0755.
    let usr = &t.nodes[lookup(&t, "usr").unwrap()];
    assert_eq!((usr.meta.perm, usr.meta.uid), (0o755, 0));
    assert_eq!(
        t.nodes[lookup(&t, "etc/l").unwrap()].kind,
        NodeKind::Symlink(b"a".to_vec())
    );
    // The replaced file's data was given back.
    assert_eq!(s.freed, vec![1]);
}

#[test]
fn whiteouts_hide_lower_but_not_same_layer_entries() {
    let l0 = tar_of(&[
        E::File("a", b"a"),
        E::File("b", b"b"),
        E::File("c", b"c"),
        E::Dir("d/", 0o755),
        E::File("d/x", b"x"),
    ]);
    // Whiteout before and after a same-layer entry of that name; a whiteout of a dir.
    let l1 = tar_of(&[
        E::File(".wh.a", b""),
        E::File("b", b"B"),
        E::File(".wh.b", b""),
        E::File(".wh.c", b""),
        E::File("c", b"C"),
        E::File(".wh.d", b""),
        E::File(".wh.nothing", b""),
    ]);
    let (t, s) = flatten(&[l0, l1]).unwrap();
    assert!(lookup(&t, "a").is_none());
    assert_eq!(file_data(&t, &s, "b").unwrap(), b"B");
    assert_eq!(file_data(&t, &s, "c").unwrap(), b"C");
    assert!(lookup(&t, "d").is_none());
    assert!(t.reachable().iter().all(|(id, _)| !matches!(
        &t.nodes[*id].kind,
        NodeKind::File { .. }
    ) || lookup(&t, "b") == Some(*id)
        || lookup(&t, "c") == Some(*id)));
    // a, b, c (old), d/x freed; nothing leaked.
    assert_eq!(s.data.len(), 2);
    // No .wh. name anywhere.
    for (id, _) in t.reachable() {
        if let Some(c) = t.children(id) {
            assert!(c.keys().all(|k| !k.starts_with(b".wh.")));
        }
    }
}

#[test]
fn opaque_directory_keeps_only_this_layers_entries() {
    let l0 = tar_of(&[
        E::Dir("d/", 0o755),
        E::File("d/old", b"o"),
        E::Dir("d/sub/", 0o755),
        E::File("d/sub/deep", b"d"),
        E::File("keep", b"k"),
    ]);
    let l1 = tar_of(&[
        E::File("d/new1", b"1"),
        E::Dir("d/sub/", 0o750),
        E::File("d/.wh..wh..opq", b""),
        E::File("d/new2", b"2"),
    ]);
    let (t, s) = flatten(&[l0, l1]).unwrap();
    let names: Vec<_> = t
        .children(lookup(&t, "d").unwrap())
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        names,
        vec![b"new1".to_vec(), b"new2".to_vec(), b"sub".to_vec()]
    );
    // The merged sub/ lost its lower content too.
    assert!(t.children(lookup(&t, "d/sub").unwrap()).unwrap().is_empty());
    assert_eq!(t.nodes[lookup(&t, "d/sub").unwrap()].meta.perm, 0o750);
    assert_eq!(file_data(&t, &s, "keep").unwrap(), b"k");
    // An opaque marker for a directory that does not exist yet creates it empty.
    let (t, _) = flatten(&[tar_of(&[E::File("e/.wh..wh..opq", b"")])]).unwrap();
    assert!(t.children(lookup(&t, "e").unwrap()).unwrap().is_empty());
}

#[test]
fn file_replaced_by_directory_and_back() {
    let l0 = tar_of(&[E::File("x", b"file")]);
    let l1 = tar_of(&[E::Dir("x/", 0o755), E::File("x/inner", b"in")]);
    let l2 = tar_of(&[E::File("x", b"file again")]);
    let (t, s) = flatten(&[l0.clone(), l1.clone()]).unwrap();
    assert_eq!(file_data(&t, &s, "x/inner").unwrap(), b"in");
    let (t, s) = flatten(&[l0, l1, l2]).unwrap();
    assert_eq!(file_data(&t, &s, "x").unwrap(), b"file again");
    assert_eq!(s.data.len(), 1);
}

#[test]
fn hardlinks_share_nodes_and_free_last() {
    let l0 = tar_of(&[
        E::File("a", b"data"),
        E::Link("b", "a"),
        E::Dir("d/", 0o755),
        E::Link("d/c", "./a"),
    ]);
    let l1 = tar_of(&[E::File(".wh.a", b""), E::Link("e", "b")]);
    let (t, s) = flatten(std::slice::from_ref(&l0)).unwrap();
    let a = lookup(&t, "a").unwrap();
    assert_eq!(lookup(&t, "b"), Some(a));
    assert_eq!(lookup(&t, "d/c"), Some(a));
    assert!(t.reachable().contains(&(a, 3)));
    let (t, s2) = flatten(&[l0, l1]).unwrap();
    assert!(lookup(&t, "a").is_none());
    assert_eq!(file_data(&t, &s2, "e").unwrap(), b"data");
    assert!(s2.freed.is_empty());
    drop(s);
}

#[test]
fn devices_fifos_and_root_entry() {
    let l0 = tar_of(&[
        E::Dir("./", 0o700),
        E::Chr("dev/null", 1, 3),
        E::Fifo("run/fifo"),
    ]);
    let (t, _) = flatten(&[l0]).unwrap();
    assert_eq!(t.nodes[t.root].meta.perm, 0o700);
    assert_eq!(
        t.nodes[lookup(&t, "dev/null").unwrap()].kind,
        NodeKind::CharDev { major: 1, minor: 3 }
    );
    assert_eq!(
        t.nodes[lookup(&t, "run/fifo").unwrap()].kind,
        NodeKind::Fifo
    );
}

#[test]
fn hostile_paths_are_refused() {
    let cases: Vec<(Vec<E>, &str)> = vec![
        (vec![E::File("../escape", b"x")], "'..'"),
        (vec![E::File("a/../../escape", b"x")], "'..'"),
        (vec![E::File("/etc/passwd", b"x")], "absolute"),
        (
            vec![E::Sym("link", "/etc"), E::File("link/passwd", b"x")],
            "through the symlink",
        ),
        (
            vec![E::Sym("link", "../.."), E::Dir("link/sub/", 0o755)],
            "through the symlink",
        ),
        (
            vec![E::File("f", b"x"), E::File("f/child", b"y")],
            "not a directory",
        ),
        (vec![E::Link("h", "missing")], "not (yet) in the image"),
        (vec![E::Link("h", "../../etc/shadow")], "outside the image"),
        (vec![E::Link("h", "/etc/shadow")], "outside the image"),
        (
            vec![E::Dir("d/", 0o755), E::Link("h", "d")],
            "is a directory",
        ),
        (
            vec![E::Sym("s", "x"), E::Link("h", "s/y")],
            "through the symlink",
        ),
        (vec![E::Sym("empty", "")], "empty target"),
        (vec![E::File("a/.wh...", b"")], "'..' name"),
    ];
    for (entries, want) in cases {
        let err = flatten(&[tar_of(&entries)])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err} should mention {want}");
        assert!(err.contains("layer0"), "{err}");
    }
    // A hardlink to a file that only appears later in the same layer is "not yet seen".
    let err = flatten(&[tar_of(&[E::Link("h", "later"), E::File("later", b"x")])])
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(
        err,
        FlattenError::Walk(WalkError::Hardlink { .. })
    ));
}

#[test]
fn pax_names_xattrs_times_and_ids() {
    let long = format!("{}/{}", "d".repeat(150), "é-ünï-ファイル".repeat(3));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o4755);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_pax_extensions([
        (
            "SCHILY.xattr.security.capability",
            &b"\x01\x00\x00\x02\x00\x20\x00\x00"[..],
        ),
        ("SCHILY.xattr.user.note", b"hi"),
        ("mtime", b"1700000000.123456789"),
        ("uid", b"100000"),
        ("gid", b"200000"),
    ])
    .unwrap();
    b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
    let (t, s) = flatten(&[b.into_inner().unwrap()]).unwrap();
    let id = lookup(&t, &long).expect("long non-ASCII name");
    let m = &t.nodes[id].meta;
    assert_eq!(
        (m.perm, m.uid, m.gid, m.mtime, m.mtime_nsec),
        (0o4755, 100000, 200000, 1_700_000_000, 123_456_789)
    );
    assert_eq!(m.xattrs[&b"user.note"[..]], b"hi");
    assert_eq!(m.xattrs[&b"security.capability"[..]].len(), 8);
    assert_eq!(file_data(&t, &s, &long).unwrap(), b"ok");
}

#[test]
fn entry_limit_and_corrupt_tar() {
    let l0 = tar_of(&[E::File("a", b""), E::File("b", b""), E::File("c", b"")]);
    let mut sink = MemSink::default();
    let mut f = Flattener::new(&mut sink).with_max_entries(2);
    let err = f.apply_layer("l", &mut &l0[..]).unwrap_err();
    assert!(
        matches!(
            err,
            FlattenError::Walk(WalkError::TooManyEntries { limit: 2, .. })
        ),
        "{err}"
    );

    let mut bad = tar_of(&[E::File("a", b"0123456789")]);
    bad[148..156].copy_from_slice(b"0000000\0"); // break the header checksum
    let err = flatten(&[bad]).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, FlattenError::Walk(WalkError::Tar { .. })),
        "{err}"
    );
    // Truncated in the middle of a file's data.
    let cut = tar_of(&[E::File("a", &[7u8; 3000])]);
    let err = flatten(&[cut[..1500].to_vec()]).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("layer0"), "{err}");
}

#[test]
fn counting_sink_tracks_live_bytes() {
    let l0 = tar_of(&[E::File("a", &[1u8; 5000]), E::File("b", b"xy")]);
    let l1 = tar_of(&[E::File(".wh.a", b"")]);
    let mut sink = CountingSink::default();
    let mut f = Flattener::new(&mut sink);
    f.apply_layer("0", &mut &l0[..]).unwrap();
    f.apply_layer("1", &mut &l1[..]).unwrap();
    drop(f);
    assert_eq!((sink.live_bytes, sink.live_blocks_bytes), (2, 4096));
}
