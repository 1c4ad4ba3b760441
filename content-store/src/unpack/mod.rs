//! Safe unpacking of OCI image layers onto a root directory.
//!
//! [`apply_layer`] applies one layer tarball (plain, gzip or zstd) onto a
//! directory holding the lower layers already applied, following the OCI
//! image spec's layer.md (changesets with whiteouts and opaque directories),
//! and refuses, naming the entry, everything that could reach outside the
//! root or exhaust the box:
//!
//! - paths with a `..` component (a leading `/` or `./` is stripped);
//! - entries whose parent path goes through a symlink: every path is opened
//!   relative to a directory fd of the root with `openat2` and
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so the
//!   kernel enforces it even if the tree changes underneath, and the final
//!   component is never followed (`O_NOFOLLOW`, `O_EXCL`,
//!   `AT_SYMLINK_NOFOLLOW`);
//! - symlinks whose relative target, resolved lexically from the link's
//!   directory, climbs above the root. Absolute targets (`bin/sh ->
//!   /bin/busybox`) are normal in images and allowed: they mean a path in the
//!   container's root at run time. Whoever reads the unpacked tree from the
//!   host must resolve paths beneath the root (`RESOLVE_IN_ROOT`);
//! - hardlinks whose target has `..`, is missing, is not a regular file, or is
//!   reached through a symlink (an absolute target is taken inside the root);
//! - character and block device nodes;
//! - more than [`Limits::max_entries`] entries or [`Limits::max_bytes`] bytes
//!   of contents, and more than [`METADATA_WINDOW`] bytes of tar metadata
//!   (long names, PAX records) per entry, which bounds memory;
//! - corrupt or truncated tar, gzip or zstd streams, including a tar stream
//!   that ends without its end-of-archive marker. Bytes after the tar end
//!   (and after the gzip member or zstd frame holding it) are never read.
//!
//! A `./` directory entry (the root itself) is skipped: the root's owner and
//! mode belong to the caller.
//!
//! Ownership: numeric uid/gid are applied when running as root (euid 0);
//! otherwise files stay owned by the caller (only root may give files away).
//! Extended attributes (PAX `SCHILY.xattr.*`, incl. file capabilities) are
//! ignored: they are not applied to the unpacked files.
//!
//! On error the root may hold a partial layer (the caller discards it);
//! nothing outside the root is ever touched.

mod at;
mod entry_path;
mod error;
mod hide;
mod meta;
mod nodes;
mod stream;
mod whiteout;
mod writer;

use std::fmt;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

pub use error::{At, LimitKind, Refusal, UnpackError};

use stream::Guard;
use writer::Applier;

/// How many bytes of tar metadata (headers, GNU long names, PAX records,
/// padding) may precede one entry. Keeps the memory the tar reader uses for
/// long names and PAX records bounded.
pub const METADATA_WINDOW: u64 = 16 * 1024 * 1024;

/// How a layer blob is compressed (from its OCI media type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// Zstandard (one or more frames; skippable frames are skipped).
    Zstd,
}

impl Compression {
    /// The compression of a layer with this media type.
    ///
    /// Accepts the OCI layer types (`application/vnd.oci.image.layer.v1.tar`,
    /// `+gzip`, `+zstd`, and their `nondistributable` variants) and Docker's
    /// (`application/vnd.docker.image.rootfs.diff.tar.gzip`,
    /// `application/vnd.docker.image.rootfs.diff.tar`, and the foreign-layer
    /// `...rootfs.foreign.diff.tar.gzip`). Media type parameters and case
    /// are ignored.
    pub fn from_media_type(media_type: &str) -> Result<Compression, UnpackError> {
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Self::Zstd),
            _ => Err(UnpackError::UnknownMediaType(media_type.to_owned())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "tar",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

/// Bounds on one layer, against decompression bombs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of entry contents (sum of the declared entry sizes).
    pub max_bytes: u64,
    /// Most tar entries (each file, directory, link, whiteout...).
    pub max_entries: u64,
}

impl Default for Limits {
    /// 64 GiB and 1 000 000 entries.
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024 * 1024,
            max_entries: 1_000_000,
        }
    }
}

/// What one layer contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files and FIFOs written.
    pub files: u64,
    /// Directory entries applied (created or updated).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Applies one layer onto `root` (a directory that holds the lower layers
/// already applied, or is empty for the first layer).
///
/// `reader` yields the blob as stored (compressed per `compression`). See the
/// [module docs](self) for what is refused. On error, `root` may hold part of
/// the layer; nothing outside `root` is touched.
pub fn apply_layer(
    reader: impl Read,
    compression: Compression,
    root: &Path,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let root_fd = at::open_root(root).map_err(|e| UnpackError::Root {
        root: root.to_owned(),
        source: io::Error::from(e),
    })?;
    let guard = Guard::new(reader, compression, METADATA_WINDOW);
    let stream = guard.state();
    let mut applier = Applier::new(root_fd, *limits, compression, Rc::clone(&stream));
    let mut archive = tar::Archive::new(guard);
    let mut last: Option<String> = None;
    let entries = archive
        .entries()
        .map_err(|e| applier.stream_error(At::Start, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| applier.stream_error(At::after(last.as_deref()), e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        stream.set_budget(entry.size().saturating_add(METADATA_WINDOW));
        applier.apply(&mut entry, &name)?;
        last = Some(name);
    }
    if stream.eof() {
        return Err(UnpackError::Tar {
            at: At::after(last.as_deref()),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ends without the tar end-of-archive marker",
            ),
        });
    }
    archive
        .into_inner()
        .finish()
        .map_err(|e| applier.stream_error(At::after(last.as_deref()), e))?;
    applier.finish()
}
