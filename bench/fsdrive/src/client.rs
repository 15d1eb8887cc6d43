//! A FUSE client speaking over the driver's virtqueues, laying requests out
//! as Linux's virtio-fs driver does: header and arguments in one buffer,
//! write data in page-sized buffers after it; the reply's header and
//! fixed part in one buffer, read data in page-sized buffers after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use devices::GuestMemory;
use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, FlushIn, ForgetIn, InHeader, InitIn, InitOut, Opcode, OpenIn, OpenOut,
    OutHeader, ReadIn, ReleaseIn, WriteIn, WriteOut,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::ring::{Buf, Ring, RING_SPAN};
use crate::servers::Server;
use crate::DriveError;

/// Guest memory the driver needs: two rings, then its buffers.
pub const MEM_SIZE: usize = 16 << 20;
const REQUEST: u64 = 2 * RING_SPAN;
const REQUEST_CAP: usize = 0x10000;
const REPLY: u64 = REQUEST + REQUEST_CAP as u64;
const REPLY_CAP: usize = 0x10000;
/// Pages for write data and read data.
const DATA: u64 = 0x100000;
const PAGE: usize = 4096;
/// The largest READ or WRITE (Linux's default max_pages, 32).
pub const MAX_IO: usize = 32 * PAGE;
const HIPRIO: usize = 0;
const REQUESTS: usize = 1;

/// The FUSE protocol minor version the client speaks (Linux 5.10's; both
/// servers know it).
const MINOR: u32 = 31;
// INIT flags Linux asks for that matter to these jobs.
const FUSE_ASYNC_READ: u32 = 1 << 0;
const FUSE_ATOMIC_O_TRUNC: u32 = 1 << 3;
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_DO_READDIRPLUS: u32 = 1 << 13;
const FUSE_READDIRPLUS_AUTO: u32 = 1 << 14;
const FUSE_AUTO_INVAL_DATA: u32 = 1 << 12;
const FUSE_PARALLEL_DIROPS: u32 = 1 << 18;
const FUSE_MAX_PAGES: u32 = 1 << 22;

/// One server and the queues to it.
pub struct Client {
    mem: Arc<GuestMemory>,
    rings: [Ring; 2],
    server: Box<dyn Server>,
    unique: u64,
    /// Requests sent, by opcode.
    pub sent: BTreeMap<&'static str, u64>,
}

impl Client {
    /// Rings for a new session, laid out at the start of `mem` (zeroed).
    pub fn rings(mem: &GuestMemory) -> Result<[Ring; 2], DriveError> {
        mem.write_slice(&vec![0u8; 2 * RING_SPAN as usize], GuestAddress(0))
            .map_err(|e| DriveError::Memory(e.to_string()))?;
        Ok([Ring::new(0), Ring::new(RING_SPAN)])
    }

    /// A client over `rings` (from [`Client::rings`]), already given to
    /// `server`; sends FUSE_INIT.
    pub fn new(
        mem: Arc<GuestMemory>,
        rings: [Ring; 2],
        server: Box<dyn Server>,
    ) -> Result<Client, DriveError> {
        let mut c = Client {
            mem,
            rings,
            server,
            unique: 0,
            sent: BTreeMap::new(),
        };
        let init = InitIn {
            major: 7,
            minor: MINOR,
            max_readahead: MAX_IO as u32,
            flags: FUSE_ASYNC_READ
                | FUSE_ATOMIC_O_TRUNC
                | FUSE_BIG_WRITES
                | FUSE_DO_READDIRPLUS
                | FUSE_READDIRPLUS_AUTO
                | FUSE_AUTO_INVAL_DATA
                | FUSE_PARALLEL_DIROPS
                | FUSE_MAX_PAGES,
        };
        let out: InitOut = c.call_obj(Opcode::Init, 0, &[init.as_slice()])?;
        if out.major != 7 {
            return Err(DriveError::Protocol(format!(
                "INIT answered major {}",
                out.major
            )));
        }
        c.sent.clear();
        Ok(c)
    }

    /// The server's CPU so far.
    pub fn server_cpu(&self) -> Result<std::time::Duration, DriveError> {
        self.server.cpu()
    }

    fn memory<T>(&self, r: Result<T, vm_memory::GuestMemoryError>) -> Result<T, DriveError> {
        r.map_err(|e| DriveError::Memory(e.to_string()))
    }

    /// Sends one request on the request queue and waits for its reply:
    /// `args` after the header, `write_pages` bytes of write data, room for
    /// `reply_fixed` bytes after the reply header and `read_pages` bytes of
    /// read data. Returns the reply's length past its header.
    fn call(
        &mut self,
        op: Opcode,
        nodeid: u64,
        args: &[&[u8]],
        write_data: usize,
        reply_fixed: usize,
        read_data: usize,
    ) -> Result<usize, DriveError> {
        let args_len: usize = args.iter().map(|a| a.len()).sum();
        let header_len = std::mem::size_of::<InHeader>();
        if header_len + args_len > REQUEST_CAP
            || write_data > MAX_IO
            || read_data > MAX_IO
            || reply_fixed > REPLY_CAP
        {
            return Err(DriveError::Protocol(format!("{op:?}: request too large")));
        }
        self.unique += 1;
        let header = InHeader {
            len: (header_len + args_len + write_data) as u32,
            opcode: op as u32,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let mut at = REQUEST;
        let w = self.mem.write_slice(header.as_slice(), GuestAddress(at));
        self.memory(w)?;
        at += header_len as u64;
        for a in args {
            let w = self.mem.write_slice(a, GuestAddress(at));
            self.memory(w)?;
            at += a.len() as u64;
        }
        let mut bufs = vec![Buf {
            addr: REQUEST,
            len: (header_len + args_len) as u32,
            device_writes: false,
        }];
        pages(&mut bufs, write_data, false);
        bufs.push(Buf {
            addr: REPLY,
            len: (std::mem::size_of::<OutHeader>() + reply_fixed) as u32,
            device_writes: true,
        });
        pages(&mut bufs, read_data, true);
        *self.sent.entry(opcode_name(op)).or_default() += 1;
        let used = self.round_trip(REQUESTS, &bufs)? as usize;
        let out: OutHeader = {
            let r = self.mem.read_obj(GuestAddress(REPLY));
            self.memory(r)?
        };
        if out.unique != self.unique
            || out.len as usize != used
            || used < std::mem::size_of::<OutHeader>()
        {
            return Err(DriveError::Protocol(format!(
                "{op:?}: reply unique {} len {} (used {used}), expected unique {}",
                out.unique, out.len, self.unique
            )));
        }
        if out.error != 0 {
            return Err(DriveError::Errno {
                op: opcode_name(op),
                errno: -out.error,
            });
        }
        Ok(used - std::mem::size_of::<OutHeader>())
    }

    /// [`Client::call`] for a reply that is one fixed struct.
    fn call_obj<T: ByteValued>(
        &mut self,
        op: Opcode,
        nodeid: u64,
        args: &[&[u8]],
    ) -> Result<T, DriveError> {
        let n = self.call(op, nodeid, args, 0, std::mem::size_of::<T>(), 0)?;
        if n < std::mem::size_of::<T>() {
            return Err(DriveError::Protocol(format!(
                "{op:?}: short reply ({n} bytes)"
            )));
        }
        let r = self.mem.read_obj(GuestAddress(
            REPLY + std::mem::size_of::<OutHeader>() as u64,
        ));
        self.memory(r)
    }

    /// Makes a chain available on `queue`, kicks, and waits for it to be used.
    fn round_trip(&mut self, queue: usize, bufs: &[Buf]) -> Result<u32, DriveError> {
        let r = self.rings[queue].submit(&self.mem, bufs);
        self.memory(r)?;
        self.server.kick(queue)?;
        loop {
            let r = self.rings[queue].take_used(&self.mem);
            if let Some(len) = self.memory(r)? {
                return Ok(len);
            }
            self.server.wait()?;
        }
    }

    /// LOOKUP: the entry, or None for a name that is not there (ENOENT, or
    /// a negative entry with node id 0).
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<Option<EntryOut>, DriveError> {
        match self.call_obj::<EntryOut>(Opcode::Lookup, parent, &[&cstr(name)]) {
            Ok(e) if e.nodeid == 0 => Ok(None),
            Ok(e) => Ok(Some(e)),
            Err(DriveError::Errno {
                errno: libc::ENOENT,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// FORGET, on the high-priority queue as Linux sends it (no reply).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<(), DriveError> {
        self.unique += 1;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + std::mem::size_of::<ForgetIn>()) as u32,
            opcode: Opcode::Forget as u32,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(ForgetIn { nlookup }.as_slice());
        let w = self.mem.write_slice(&bytes, GuestAddress(REQUEST));
        self.memory(w)?;
        *self.sent.entry("FORGET").or_default() += 1;
        self.round_trip(
            HIPRIO,
            &[Buf {
                addr: REQUEST,
                len: bytes.len() as u32,
                device_writes: false,
            }],
        )
        .map(drop)
    }

    /// OPEN or OPENDIR: the file handle.
    pub fn open(&mut self, nodeid: u64, dir: bool, flags: u32) -> Result<u64, DriveError> {
        let op = if dir { Opcode::Opendir } else { Opcode::Open };
        let arg = OpenIn {
            flags,
            fuse_flags: 0,
        };
        Ok(self.call_obj::<OpenOut>(op, nodeid, &[arg.as_slice()])?.fh)
    }

    /// RELEASE or RELEASEDIR.
    pub fn release(
        &mut self,
        nodeid: u64,
        dir: bool,
        fh: u64,
        flags: u32,
    ) -> Result<(), DriveError> {
        let op = if dir {
            Opcode::Releasedir
        } else {
            Opcode::Release
        };
        let arg = ReleaseIn {
            fh,
            flags,
            ..Default::default()
        };
        self.call(op, nodeid, &[arg.as_slice()], 0, 0, 0).map(drop)
    }

    /// FLUSH (each close(2) of a file sends one).
    pub fn flush(&mut self, nodeid: u64, fh: u64) -> Result<(), DriveError> {
        let arg = FlushIn {
            fh,
            lock_owner: 1,
            ..Default::default()
        };
        self.call(Opcode::Flush, nodeid, &[arg.as_slice()], 0, 0, 0)
            .map(drop)
    }

    /// READ (or READDIRPLUS with `plus`) of up to `size` bytes at `offset`;
    /// the bytes come back.
    pub fn read(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: usize,
        plus: bool,
    ) -> Result<Vec<u8>, DriveError> {
        let arg = ReadIn {
            fh,
            offset,
            size: size as u32,
            ..Default::default()
        };
        let op = if plus {
            Opcode::Readdirplus
        } else {
            Opcode::Read
        };
        let n = self.call(op, nodeid, &[arg.as_slice()], 0, 0, size)?;
        let mut data = vec![0u8; n];
        // The first page buffer follows the reply header's buffer.
        let r = self.mem.read_slice(&mut data, GuestAddress(DATA));
        self.memory(r)?;
        Ok(data)
    }

    /// WRITE of `size` bytes (the data pages' contents) at `offset`.
    pub fn write(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: usize,
    ) -> Result<(), DriveError> {
        let arg = WriteIn {
            fh,
            offset,
            size: size as u32,
            ..Default::default()
        };
        let out: WriteOut = {
            let n = self.call(Opcode::Write, nodeid, &[arg.as_slice()], size, 8, 0)?;
            if n < 8 {
                return Err(DriveError::Protocol("WRITE: short reply".into()));
            }
            let r = self.mem.read_obj(GuestAddress(
                REPLY + std::mem::size_of::<OutHeader>() as u64,
            ));
            self.memory(r)?
        };
        if out.size as usize != size {
            return Err(DriveError::Protocol(format!(
                "WRITE: wrote {} of {size}",
                out.size
            )));
        }
        Ok(())
    }

    /// CREATE of `name` in `parent` (open for writing, truncated).
    pub fn create(&mut self, parent: u64, name: &str) -> Result<(EntryOut, u64), DriveError> {
        let arg = CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0o022,
            fuse_flags: 0,
        };
        let fixed = std::mem::size_of::<EntryOut>() + std::mem::size_of::<OpenOut>();
        let n = self.call(
            Opcode::Create,
            parent,
            &[arg.as_slice(), &cstr(name)],
            0,
            fixed,
            0,
        )?;
        if n < fixed {
            return Err(DriveError::Protocol("CREATE: short reply".into()));
        }
        let at = REPLY + std::mem::size_of::<OutHeader>() as u64;
        let entry: EntryOut = {
            let r = self.mem.read_obj(GuestAddress(at));
            self.memory(r)?
        };
        let open: OpenOut = {
            let r = self
                .mem
                .read_obj(GuestAddress(at + std::mem::size_of::<EntryOut>() as u64));
            self.memory(r)?
        };
        Ok((entry, open.fh))
    }

    /// UNLINK of `name` in `parent`.
    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), DriveError> {
        self.call(Opcode::Unlink, parent, &[&cstr(name)], 0, 0, 0)
            .map(drop)
    }

    /// Fills the write-data pages with a pattern (once per session).
    pub fn fill_write_data(&self) -> Result<(), DriveError> {
        let data: Vec<u8> = (0..MAX_IO).map(|i| (i * 31 % 251) as u8).collect();
        let w = self.mem.write_slice(&data, GuestAddress(DATA));
        self.memory(w)
    }
}

/// Appends page-sized buffers for `len` bytes of data from [`DATA`].
fn pages(bufs: &mut Vec<Buf>, len: usize, device_writes: bool) {
    let mut off = 0;
    while off < len {
        let n = (len - off).min(PAGE);
        bufs.push(Buf {
            addr: DATA + off as u64,
            len: n as u32,
            device_writes,
        });
        off += n;
    }
}

fn cstr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// The opcode's name as the servers' statistics print it.
pub fn opcode_name(op: Opcode) -> &'static str {
    match op {
        Opcode::Lookup => "LOOKUP",
        Opcode::Forget => "FORGET",
        Opcode::Init => "INIT",
        Opcode::Open => "OPEN",
        Opcode::Opendir => "OPENDIR",
        Opcode::Read => "READ",
        Opcode::Readdirplus => "READDIRPLUS",
        Opcode::Write => "WRITE",
        Opcode::Flush => "FLUSH",
        Opcode::Release => "RELEASE",
        Opcode::Releasedir => "RELEASEDIR",
        Opcode::Create => "CREATE",
        Opcode::Unlink => "UNLINK",
        _ => "OTHER",
    }
}
