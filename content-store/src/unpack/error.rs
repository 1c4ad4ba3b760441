//! Errors of the layer unpacker: every one names the layer entry it is about.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::Compression;

/// Why applying a layer failed.
///
/// Every variant that is about the layer's content names the offending entry
/// (or, for stream errors between entries, the entry the stream broke after),
/// e.g. ``layer entry `../etc/passwd`: path leaves the root``.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The blob's media type is not a layer tarball this unpacker reads.
    #[error(
        "unknown layer media type `{0}`: expected an OCI or Docker layer tarball \
         (tar, tar+gzip or tar+zstd)"
    )]
    UnknownMediaType(String),
    /// The root directory could not be opened.
    #[error("cannot open the unpack root `{}`: {source}", root.display())]
    Root {
        /// The root as given by the caller.
        root: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The entry is malicious or unsupported, and was not applied.
    #[error("layer entry `{entry}`: {reason}")]
    Refused {
        /// The entry's path as written in the tarball (lossy UTF-8).
        entry: String,
        /// What is wrong with it.
        reason: Refusal,
    },
    /// The layer is larger than the caller allows (decompression bomb guard).
    #[error("{at}: layer exceeds the limit of {limit} {kind}")]
    Limit {
        /// Where in the layer the limit was crossed.
        at: At,
        /// Which limit.
        kind: LimitKind,
        /// The limit's value.
        limit: u64,
    },
    /// The tar stream is corrupt or truncated.
    #[error("{at}: corrupt or truncated tar stream: {source}")]
    Tar {
        /// Where in the layer.
        at: At,
        /// The tar reader's error.
        #[source]
        source: io::Error,
    },
    /// The compressed stream is corrupt or truncated.
    #[error("{at}: corrupt or truncated {compression} stream: {source}")]
    Decompress {
        /// Where in the layer.
        at: At,
        /// The layer's compression.
        compression: Compression,
        /// The decompressor's error.
        #[source]
        source: io::Error,
    },
    /// Reading the (uncompressed) layer from the caller's reader failed.
    #[error("{at}: reading the layer failed: {source}")]
    Read {
        /// Where in the layer.
        at: At,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation inside the root failed.
    #[error("layer entry `{entry}`: {op} failed: {source}")]
    Io {
        /// The entry being applied.
        entry: String,
        /// The operation, e.g. `create file`.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// A [`UnpackError::Refused`] for `entry`.
    pub(super) fn refused(entry: &str, reason: Refusal) -> Self {
        Self::Refused {
            entry: entry.to_owned(),
            reason,
        }
    }

    /// A [`UnpackError::Io`] for `entry` from a nix error.
    pub(super) fn io(entry: &str, op: &'static str, errno: nix::Error) -> Self {
        Self::Io {
            entry: entry.to_owned(),
            op,
            source: io::Error::from(errno),
        }
    }
}

/// What is wrong with a refused layer entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The path has a `..` component.
    #[error("path leaves the root")]
    PathLeavesRoot,
    /// The path (or link target) holds a NUL byte.
    #[error("name holds a NUL byte")]
    NulByte,
    /// A parent directory of the entry is a symlink.
    #[error("path goes through a symlink")]
    ThroughSymlink,
    /// A parent of the entry exists and is not a directory.
    #[error("a parent of the path is not a directory")]
    ParentNotDirectory,
    /// A non-directory entry names the root itself (e.g. `./` as a file).
    #[error("entry would replace the root directory")]
    ReplacesRoot,
    /// A relative symlink target climbs above the root.
    #[error("symlink target `{target}` leaves the root")]
    SymlinkLeavesRoot {
        /// The link target.
        target: String,
    },
    /// A link entry has an empty or missing target.
    #[error("link has no target")]
    EmptyLinkTarget,
    /// A hardlink target has a `..` component.
    #[error("hardlink target `{target}` leaves the root")]
    HardlinkLeavesRoot {
        /// The link target.
        target: String,
    },
    /// A hardlink target does not exist in the root.
    #[error("hardlink target `{target}` does not exist in the root")]
    HardlinkTargetMissing {
        /// The link target.
        target: String,
    },
    /// A hardlink target is not a regular file.
    #[error("hardlink target `{target}` is not a regular file")]
    HardlinkTargetNotFile {
        /// The link target.
        target: String,
    },
    /// A hardlink target is reached through a symlink.
    #[error("hardlink target `{target}` goes through a symlink")]
    HardlinkThroughSymlink {
        /// The link target.
        target: String,
    },
    /// Character and block devices.
    #[error("device nodes are not allowed in layers")]
    DeviceNode,
    /// A `.wh.` name that does not name a file (`.wh.`, `.wh..`, `.wh...`).
    #[error("whiteout `{name}` names no valid file")]
    BadWhiteout {
        /// The whiteout's file name.
        name: String,
    },
    /// A tar entry type this unpacker does not apply.
    #[error("unsupported tar entry type `{}`", char::from(*.0).escape_default())]
    UnsupportedType(u8),
    /// A uid or gid that is not a valid Linux id.
    #[error("owner id {0} is out of range")]
    IdOutOfRange(u64),
}

/// Which [`Limits`](super::Limits) a layer exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// [`Limits::max_entries`](super::Limits::max_entries).
    Entries,
    /// [`Limits::max_bytes`](super::Limits::max_bytes).
    Bytes,
    /// The fixed bound on tar metadata (headers, long names, PAX records)
    /// per entry, which keeps memory use bounded.
    Metadata,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Entries => "entries",
            Self::Bytes => "bytes of file contents",
            Self::Metadata => "bytes of tar metadata per entry",
        })
    }
}

/// Where in a layer's stream something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// Before the first entry was read.
    Start,
    /// In this entry (its header or contents).
    Entry(String),
    /// Between this entry and the next one (reading the next header).
    After(String),
}

impl At {
    /// `After(last)`, or `Start` when no entry was read yet.
    pub(super) fn after(last: Option<&str>) -> Self {
        last.map_or(Self::Start, |l| Self::After(l.to_owned()))
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Start => f.write_str("layer stream, before the first entry"),
            Self::Entry(e) => write!(f, "layer entry `{e}`"),
            Self::After(e) => write!(f, "layer stream after entry `{e}`"),
        }
    }
}
