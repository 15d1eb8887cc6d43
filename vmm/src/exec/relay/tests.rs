//! The relay between clients and a fake guest (the exec port's two pipes),
//! its thread under the real seccomp filter of the exec relay.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use sandbox::seccomp::{Denied, MainNeeds, Policy, ThreadKind};

use super::*;

/// A relay, the guest's ends of its port and the socket's path.
struct Setup {
    relay: Option<Relay>,
    /// What the relay sends the guest.
    guest_in: File,
    /// What the guest sends the relay.
    guest_out: File,
    path: PathBuf,
    _dir: Scratch,
}

/// A directory of this test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("minivm-relay-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(name: &str) -> Setup {
    let dir = Scratch::new(name);
    let path = dir.path().join("exec.sock");
    let (guest_in, to_guest) = io::pipe().unwrap();
    let (from_guest, guest_out) = io::pipe().unwrap();
    let policy = Policy::new(MainNeeds::default(), Denied::Stop).unwrap();
    let relay = Relay::start(
        &path,
        to_guest.into(),
        from_guest.into(),
        policy.filter(ThreadKind::Exec),
    )
    .unwrap();
    Setup {
        relay: Some(relay),
        guest_in: File::from(OwnedFd::from(guest_in)),
        guest_out: File::from(OwnedFd::from(guest_out)),
        path,
        _dir: dir,
    }
}

fn connect(s: &Setup) -> UnixStream {
    let c = UnixStream::connect(&s.path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

fn put(w: &mut impl Write, id: u32, kind: u8, payload: &[u8]) {
    w.write_all(&Frame::new(id, kind, payload).encode())
        .unwrap();
}

fn get(r: &mut impl Read) -> Frame {
    frame::read(r).unwrap().expect("a frame")
}

#[test]
fn each_client_gets_its_own_process_and_only_its_frames() {
    let mut s = setup("own");
    let mut a = connect(&s);
    let mut b = connect(&s);
    put(&mut a, 99, frame::START, b"job a");
    let start_a = get(&mut s.guest_in);
    put(&mut b, 99, frame::START, b"job b");
    let start_b = get(&mut s.guest_in);
    assert_eq!(
        (start_a.kind, start_a.payload.as_slice()),
        (frame::START, &b"job a"[..])
    );
    assert_eq!(start_b.payload, b"job b");
    assert_ne!(start_a.id, start_b.id, "the client's own id is replaced");
    put(&mut a, 0, frame::STDIN, b"in");
    put(&mut a, 0, frame::SIGNAL, &15u32.to_le_bytes());
    assert_eq!(
        get(&mut s.guest_in),
        Frame::new(start_a.id, frame::STDIN, b"in")
    );
    assert_eq!(get(&mut s.guest_in).number(), Some(15));

    put(&mut s.guest_out, start_b.id, frame::STDOUT, b"for b");
    put(&mut s.guest_out, 12345, frame::STDOUT, b"for nobody");
    put(&mut s.guest_out, start_a.id, frame::STDERR, b"for a");
    put(&mut s.guest_out, start_a.id, frame::EXIT, &[3]);
    assert_eq!(get(&mut a).payload, b"for a");
    let exit = get(&mut a);
    assert_eq!(
        (exit.kind, exit.payload.as_slice()),
        (frame::EXIT, &[3u8][..])
    );
    assert!(
        frame::read(&mut a).unwrap().is_none(),
        "closed after its EXIT"
    );
    assert_eq!(get(&mut b).payload, b"for b");

    // b goes away before its process ends: the process is killed.
    drop(b);
    let kill = get(&mut s.guest_in);
    assert_eq!(
        (kill.id, kill.kind, kill.number()),
        (start_b.id, frame::SIGNAL, Some(9))
    );

    drop(s.relay.take());
    assert!(!s.path.exists(), "the socket goes with the relay");
}

#[test]
fn clients_breaking_the_protocol_are_dropped_and_their_process_killed() {
    let mut s = setup("clients");
    // Input before START.
    let mut early = connect(&s);
    put(&mut early, 0, frame::STDIN, b"x");
    assert!(frame::read(&mut early).unwrap().is_none());
    // A second START, then an oversized frame.
    let mut twice = connect(&s);
    put(&mut twice, 0, frame::START, b"job");
    let id = get(&mut s.guest_in).id;
    put(&mut twice, 0, frame::START, b"job again");
    assert_eq!(
        get(&mut s.guest_in),
        Frame::new(id, frame::SIGNAL, &9u32.to_le_bytes())
    );
    assert!(frame::read(&mut twice).unwrap().is_none());
    let mut big = connect(&s);
    put(&mut big, 0, frame::START, b"job");
    let id = get(&mut s.guest_in).id;
    let mut header = Frame::new(0, frame::STDIN, b"").encode();
    header[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
    big.write_all(&header).unwrap();
    assert_eq!(
        get(&mut s.guest_in),
        Frame::new(id, frame::SIGNAL, &9u32.to_le_bytes())
    );
    // Frames of kinds only the guest sends.
    let mut forger = connect(&s);
    put(&mut forger, 0, frame::START, b"job");
    let id = get(&mut s.guest_in).id;
    put(&mut forger, 0, frame::EXIT, &[0]);
    assert_eq!(
        get(&mut s.guest_in),
        Frame::new(id, frame::SIGNAL, &9u32.to_le_bytes())
    );
}

#[test]
fn a_guest_breaking_the_protocol_ends_every_exec_and_later_clients() {
    let mut s = setup("guest");
    let mut a = connect(&s);
    put(&mut a, 0, frame::START, b"job");
    let id = get(&mut s.guest_in).id;
    put(&mut s.guest_out, id, frame::STDOUT, b"ok");
    assert_eq!(get(&mut a).payload, b"ok");
    // An unknown kind for a running process is dropped, not passed on.
    put(&mut s.guest_out, id, 77, b"?");
    put(&mut s.guest_out, id, frame::STDOUT, b"still ok");
    assert_eq!(get(&mut a).payload, b"still ok");
    let mut header = Frame::new(id, frame::STDOUT, b"").encode();
    header[5..9].copy_from_slice(&(frame::MAX_PAYLOAD as u32 + 1).to_le_bytes());
    s.guest_out.write_all(&header).unwrap();
    assert!(
        frame::read(&mut a).unwrap().is_none(),
        "ended without an EXIT"
    );
    let mut late = connect(&s);
    // (The write may already fail: the relay may have closed it.)
    let _ = late.write_all(&Frame::new(0, frame::START, b"job").encode());
    // Closed at once: at its end, or reset (its START was never read).
    assert!(!matches!(frame::read(&mut late), Ok(Some(_))));
}

#[test]
fn an_existing_path_is_left_alone() {
    let dir = Scratch::new("taken");
    let path = dir.path().join("taken");
    std::fs::write(&path, "keep").unwrap();
    let (_r, w) = io::pipe().unwrap();
    let (r2, _w2) = io::pipe().unwrap();
    let e = Relay::start(
        &path,
        w.into(),
        r2.into(),
        ThreadFilter::none(ThreadKind::Exec),
    )
    .err()
    .expect("refused");
    assert!(
        e.to_string().contains("cannot listen on the exec socket"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
}
