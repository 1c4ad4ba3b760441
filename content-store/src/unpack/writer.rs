//! Applies tar entries one by one onto the root: the dispatch, the limits,
//! what this layer added (for whiteouts), and the deferred directory
//! metadata.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;

use nix::errno::Errno;
use nix::sys::stat::{fchmod, futimens, Mode};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::at;
use super::entry_path::EntryPath;
use super::error::{At, LimitKind, Refusal, UnpackError};
use super::meta::Meta;
use super::stream::StreamState;
use super::whiteout::{self, Kind};
use super::{Compression, Limits, UnpackStats, METADATA_WINDOW};

/// A directory whose mode and mtime are set once the whole layer is applied,
/// so that later entries neither bump its mtime nor find it read-only.
struct DirMeta {
    path: PathBuf,
    mode: Mode,
    mtime: TimeSpec,
    entry: String,
}

/// The state of one layer being applied.
pub(super) struct Applier {
    pub(super) root: OwnedFd,
    limits: Limits,
    compression: Compression,
    stream: Rc<StreamState>,
    /// Whether to `chown` (only root may give files away).
    pub(super) chown: bool,
    pub(super) stats: UnpackStats,
    entries: u64,
    /// Sum of the entries' declared sizes (contents, and data of other
    /// entries that is skipped).
    declared: u64,
    /// Every path this layer wrote, and their ancestors: whiteouts only hide
    /// what lower layers brought.
    pub(super) keep: HashSet<PathBuf>,
    dirs: Vec<DirMeta>,
    pub(super) buf: Vec<u8>,
}

impl Applier {
    /// Starts applying a layer onto `root`.
    pub(super) fn new(
        root: OwnedFd,
        limits: Limits,
        compression: Compression,
        stream: Rc<StreamState>,
    ) -> Self {
        Self {
            root,
            limits,
            compression,
            stream,
            chown: nix::unistd::geteuid().is_root(),
            stats: UnpackStats::default(),
            entries: 0,
            declared: 0,
            keep: HashSet::new(),
            dirs: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// The error for a failed read of the layer stream at `at`: a limit, the
    /// decompressor, the caller's reader, or else the tar format.
    pub(super) fn stream_error(&self, at: At, source: io::Error) -> UnpackError {
        if self.stream.limit_hit() {
            UnpackError::Limit {
                at,
                kind: LimitKind::Metadata,
                limit: METADATA_WINDOW,
            }
        } else if self.stream.source_failed() {
            match self.compression {
                Compression::None => UnpackError::Read { at, source },
                compression => UnpackError::Decompress {
                    at,
                    compression,
                    source,
                },
            }
        } else {
            UnpackError::Tar { at, source }
        }
    }

    /// Applies one entry, named `name` (its raw path) in errors.
    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), UnpackError> {
        self.count(entry.size(), name)?;
        let raw_path = entry.path_bytes().into_owned();
        let path = EntryPath::parse(&raw_path).map_err(|r| UnpackError::refused(name, r))?;
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            tracing::debug!(entry = name, "skipping PAX global header");
            return Ok(());
        }
        let Some(file_name) = path.name() else {
            if entry_type == EntryType::Directory {
                tracing::debug!(entry = name, "skipping the root directory entry");
                return Ok(());
            }
            return Err(UnpackError::refused(name, Refusal::ReplacesRoot));
        };
        match whiteout::classify(file_name).map_err(|r| UnpackError::refused(name, r))? {
            Kind::Plain => {}
            Kind::Whiteout(target) => return self.whiteout(&path.parent(), target, name),
            Kind::Opaque => return self.opaque(&path.parent(), name),
            Kind::AufsMeta => {
                tracing::debug!(entry = name, "skipping AUFS metadata");
                return Ok(());
            }
        }
        match entry_type {
            EntryType::Regular if raw_path.ends_with(b"/") => {
                // Pre-POSIX tar marks directories by a trailing slash.
                self.dir(entry, &path, name)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &path, name)?;
            }
            EntryType::Directory => self.dir(entry, &path, name)?,
            EntryType::Symlink => self.symlink(entry, &path, name)?,
            EntryType::Link => self.hardlink(entry, &path, name)?,
            EntryType::Fifo => self.fifo(entry, &path, name)?,
            EntryType::Char | EntryType::Block => {
                return Err(UnpackError::refused(name, Refusal::DeviceNode));
            }
            other => {
                return Err(UnpackError::refused(
                    name,
                    Refusal::UnsupportedType(other.as_byte()),
                ));
            }
        }
        self.keep.extend(path.self_and_ancestors());
        Ok(())
    }

    /// Counts an entry of `size` declared bytes against the limits.
    fn count(&mut self, size: u64, name: &str) -> Result<(), UnpackError> {
        let at = || At::Entry(name.to_owned());
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::Limit {
                at: at(),
                kind: LimitKind::Entries,
                limit: self.limits.max_entries,
            });
        }
        self.declared = self.declared.saturating_add(size);
        if self.declared > self.limits.max_bytes {
            return Err(UnpackError::Limit {
                at: at(),
                kind: LimitKind::Bytes,
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Opens (creating if missing) the parent directory of `path`.
    pub(super) fn parent(&self, path: &EntryPath, name: &str) -> Result<OwnedFd, UnpackError> {
        at::ensure_dir(self.root.as_fd(), path.parent_comps())
            .map_err(|e| parent_error(e, name, "open parent directory"))
    }

    /// Opens directory `dir` if it exists (`None` if it does not, or is not
    /// a directory).
    pub(super) fn existing_dir(
        &self,
        dir: &EntryPath,
        name: &str,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        match at::open_beneath(self.root.as_fd(), &dir.to_path(), at::DIR_HANDLE) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(parent_error(e, name, "open directory")),
        }
    }

    /// Removes whatever is at `file_name` in `parent` (a tree for a
    /// directory), so that the entry can be created in its place.
    pub(super) fn clear(
        &self,
        parent: BorrowedFd<'_>,
        file_name: &std::ffi::OsStr,
        name: &str,
    ) -> Result<(), UnpackError> {
        if let Some(st) =
            at::lstat(parent, file_name).map_err(|e| UnpackError::io(name, "stat", e))?
        {
            at::remove(parent, file_name, &st)
                .map_err(|e| UnpackError::io(name, "remove the existing path", e))?;
        }
        Ok(())
    }

    /// Records a directory's mode and mtime for [`Applier::finish`].
    pub(super) fn defer_dir(&mut self, path: &EntryPath, meta: &Meta, name: &str) {
        self.dirs.push(DirMeta {
            path: path.to_path(),
            mode: meta.mode,
            mtime: meta.mtime,
            entry: name.to_owned(),
        });
    }

    /// The read side of copying: the stream error for a failed read.
    pub(super) fn read_error(&self, name: &str, source: io::Error) -> UnpackError {
        self.stream_error(At::Entry(name.to_owned()), source)
    }

    /// Sets the deferred directory metadata; returns the layer's stats.
    pub(super) fn finish(self) -> Result<UnpackStats, UnpackError> {
        for dir in &self.dirs {
            let fd = match at::open_beneath(self.root.as_fd(), &dir.path, at::DIR_READ) {
                Ok(fd) => fd,
                // Replaced or whited out later in this layer.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(UnpackError::io(&dir.entry, "open directory", e)),
            };
            fchmod(&fd, dir.mode).map_err(|e| UnpackError::io(&dir.entry, "chmod", e))?;
            futimens(&fd, &dir.mtime, &dir.mtime)
                .map_err(|e| UnpackError::io(&dir.entry, "set times", e))?;
        }
        Ok(self.stats)
    }
}

/// Maps a failure to open a parent directory beneath the root.
pub(super) fn parent_error(errno: Errno, name: &str, op: &'static str) -> UnpackError {
    match errno {
        Errno::ELOOP => UnpackError::refused(name, Refusal::ThroughSymlink),
        Errno::ENOTDIR => UnpackError::refused(name, Refusal::ParentNotDirectory),
        Errno::EXDEV => UnpackError::refused(name, Refusal::PathLeavesRoot),
        e => UnpackError::io(name, op, e),
    }
}
