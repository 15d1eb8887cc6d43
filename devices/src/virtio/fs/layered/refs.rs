//! Host references into the layers, held by owning types: a layer inode
//! reference ([`RealRef`]) is forgotten and an open layer handle
//! ([`LayerHandle`]) released when the value is dropped, so an early return
//! cannot leak either; [`RealRef::keep`] hands a reference to the node tree,
//! which releases it when the guest forgets the node.

use std::ops::Deref;

use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::passthrough::PassthroughFs;

/// One layer: a directory tree served by fuse-backend-rs.
pub type Layer = PassthroughFs<()>;

/// A file in one layer: the layer's index and its inode there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Real {
    pub layer: usize,
    pub ino: u64,
}

pub(super) fn ctx0() -> Context {
    // uid/gid 0 tells PassthroughFs not to switch credentials: the VMM's own.
    Context::default()
}

/// One layer inode reference on a [`Real`], forgotten on drop.
#[must_use = "dropping it forgets the reference"]
pub(super) struct RealRef<'a> {
    layer: &'a Layer,
    real: Real,
}

impl<'a> RealRef<'a> {
    /// Takes over the reference that a layer lookup or create returned.
    pub(super) fn new(layer: &'a Layer, real: Real) -> Self {
        RealRef { layer, real }
    }

    /// The file this refers to.
    pub(super) fn real(&self) -> Real {
        self.real
    }

    /// Hands the reference to the node tree, which forgets it itself
    /// ([`forget_real`]) when the guest forgets the node.
    pub(super) fn keep(self) -> Real {
        let real = self.real;
        std::mem::forget(self);
        real
    }
}

impl Deref for RealRef<'_> {
    type Target = Real;
    fn deref(&self) -> &Real {
        &self.real
    }
}

impl Drop for RealRef<'_> {
    fn drop(&mut self) {
        forget_real(self.layer, self.real);
    }
}

/// Gives back one reference the node tree kept ([`RealRef::keep`]).
pub(super) fn forget_real(layer: &Layer, real: Real) {
    layer.forget(&ctx0(), real.ino, 1);
}

/// An open handle of one layer (a file's or a directory's), released on
/// drop unless kept for the guest.
#[must_use = "dropping it releases the handle"]
pub(super) struct LayerHandle<'a> {
    layer: &'a Layer,
    ino: u64,
    fh: u64,
    dir: bool,
}

impl<'a> LayerHandle<'a> {
    /// Takes over the handle `fh` that `open`/`create` returned for `ino`.
    pub(super) fn file(layer: &'a Layer, ino: u64, fh: Option<u64>) -> Self {
        LayerHandle {
            layer,
            ino,
            fh: fh.unwrap_or(0),
            dir: false,
        }
    }

    /// Takes over the handle `fh` that `opendir` returned for `ino`.
    pub(super) fn dir(layer: &'a Layer, ino: u64, fh: Option<u64>) -> Self {
        LayerHandle {
            layer,
            ino,
            fh: fh.unwrap_or(0),
            dir: true,
        }
    }

    pub(super) fn fh(&self) -> u64 {
        self.fh
    }

    /// Hands the handle to the open-file table, released by the guest's
    /// RELEASE.
    pub(super) fn keep(self) -> u64 {
        let fh = self.fh;
        std::mem::forget(self);
        fh
    }
}

impl Drop for LayerHandle<'_> {
    fn drop(&mut self) {
        let (ctx, ino, fh) = (ctx0(), self.ino, self.fh);
        let res = if self.dir {
            self.layer.releasedir(&ctx, ino, 0, fh)
        } else {
            self.layer.release(&ctx, ino, 0, fh, false, false, None)
        };
        if let Err(e) = res {
            tracing::debug!("layered fs: releasing a layer handle: {e}");
        }
    }
}

/// An open file of the merged view: which layer's file, and that layer's
/// handle (owned by the guest until it releases it).
#[derive(Clone, Copy, Debug)]
pub(super) struct OpenFile {
    pub real: Real,
    pub fh: u64,
}
