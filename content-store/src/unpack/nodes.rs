//! Creating each kind of entry: regular files, directories, symlinks,
//! hardlinks and FIFOs. The final component is never followed.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mkdirat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::unistd::{fchown, fchownat, linkat, mkfifoat, symlinkat};

use super::at;
use super::entry_path::{check_symlink_target, parse_hardlink_target, EntryPath};
use super::error::{At, Refusal, UnpackError};
use super::meta::Meta;
use super::writer::Applier;

/// Mode a file or FIFO is created with, before its own mode is set.
const PRIVATE: u32 = 0o600;

impl Applier {
    /// A regular file: whatever was at the path is removed, the file is
    /// created with `O_CREAT | O_EXCL | O_NOFOLLOW` and filled.
    pub(super) fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        name: &str,
    ) -> Result<(), UnpackError> {
        let meta = Meta::of(entry, name)?;
        let (parent, file_name) = self.prepare(path, name)?;
        let fd = openat(
            parent.as_fd(),
            file_name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(PRIVATE),
        )
        .map_err(|e| UnpackError::io(name, "create file", e))?;
        let mut file = File::from(fd);
        let written = self.copy(entry, &mut file, name)?;
        if written != entry.size() {
            return Err(UnpackError::Tar {
                at: At::Entry(name.to_owned()),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file contents end after {written} of {} bytes",
                        entry.size()
                    ),
                ),
            });
        }
        self.set_meta(file.as_fd(), &meta, name)?;
        self.stats.files += 1;
        self.stats.bytes += written;
        Ok(())
    }

    /// Copies an entry's contents into `file`; returns the byte count.
    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        name: &str,
    ) -> Result<u64, UnpackError> {
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => return Ok(written),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(name, e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|source| UnpackError::Io {
                    entry: name.to_owned(),
                    op: "write file",
                    source,
                })?;
            written += n as u64;
        }
    }

    /// A directory: an existing directory is kept (its children too) and
    /// only gets this entry's owner, mode and mtime; anything else there is
    /// removed first. Mode and mtime are set after the whole layer.
    pub(super) fn dir<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        name: &str,
    ) -> Result<(), UnpackError> {
        let meta = Meta::of(entry, name)?;
        let parent = self.parent(path, name)?;
        let file_name = leaf(path, name)?;
        let existing =
            at::lstat(parent.as_fd(), file_name).map_err(|e| UnpackError::io(name, "stat", e))?;
        match existing {
            Some(st) if at::is_dir(&st) => {}
            Some(st) => {
                at::remove(parent.as_fd(), file_name, &st)
                    .map_err(|e| UnpackError::io(name, "remove the existing path", e))?;
                make_dir(parent.as_fd(), file_name, name)?;
            }
            None => make_dir(parent.as_fd(), file_name, name)?,
        }
        let dir = at::open_child_dir(parent.as_fd(), file_name)
            .map_err(|e| UnpackError::io(name, "open directory", e))?;
        if self.chown {
            fchown(&dir, Some(meta.uid), Some(meta.gid))
                .map_err(|e| UnpackError::io(name, "chown", e))?;
        }
        self.defer_dir(path, &meta, name);
        self.stats.dirs += 1;
        Ok(())
    }

    /// A symlink, after checking its target (see [`check_symlink_target`]).
    pub(super) fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        name: &str,
    ) -> Result<(), UnpackError> {
        let meta = Meta::of(entry, name)?;
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| UnpackError::refused(name, Refusal::EmptyLinkTarget))?
            .into_owned();
        check_symlink_target(path, &target).map_err(|r| UnpackError::refused(name, r))?;
        let (parent, file_name) = self.prepare(path, name)?;
        symlinkat(OsStr::from_bytes(&target), parent.as_fd(), file_name)
            .map_err(|e| UnpackError::io(name, "create symlink", e))?;
        if self.chown {
            fchownat(
                parent.as_fd(),
                file_name,
                Some(meta.uid),
                Some(meta.gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| UnpackError::io(name, "chown symlink", e))?;
        }
        utimensat(
            parent.as_fd(),
            file_name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| UnpackError::io(name, "set symlink times", e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    /// A hardlink to a regular file already in the root (this layer's or a
    /// lower one's), never through a symlink.
    pub(super) fn hardlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        name: &str,
    ) -> Result<(), UnpackError> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| UnpackError::refused(name, Refusal::EmptyLinkTarget))?
            .into_owned();
        let target = parse_hardlink_target(&raw).map_err(|r| UnpackError::refused(name, r))?;
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason| UnpackError::refused(name, reason);
        let missing = || refuse(Refusal::HardlinkTargetMissing { target: shown() });
        let target_dir = match at::open_beneath(
            self.root.as_fd(),
            &target.parent().to_path(),
            at::DIR_HANDLE,
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(missing()),
            Err(Errno::ELOOP) => {
                return Err(refuse(Refusal::HardlinkThroughSymlink { target: shown() }))
            }
            Err(Errno::EXDEV) => {
                return Err(refuse(Refusal::HardlinkLeavesRoot { target: shown() }))
            }
            Err(e) => return Err(UnpackError::io(name, "open hardlink target directory", e)),
        };
        let target_name = leaf(&target, name)?;
        let target_st = at::lstat(target_dir.as_fd(), target_name)
            .map_err(|e| UnpackError::io(name, "stat hardlink target", e))?
            .ok_or_else(missing)?;
        if at::kind(&target_st) != SFlag::S_IFREG {
            return Err(refuse(Refusal::HardlinkTargetNotFile { target: shown() }));
        }
        let parent = self.parent(path, name)?;
        let file_name = leaf(path, name)?;
        if let Some(st) =
            at::lstat(parent.as_fd(), file_name).map_err(|e| UnpackError::io(name, "stat", e))?
        {
            if (st.st_dev, st.st_ino) == (target_st.st_dev, target_st.st_ino) {
                self.stats.hardlinks += 1;
                return Ok(());
            }
            at::remove(parent.as_fd(), file_name, &st)
                .map_err(|e| UnpackError::io(name, "remove the existing path", e))?;
        }
        linkat(
            target_dir.as_fd(),
            target_name,
            parent.as_fd(),
            file_name,
            AtFlags::empty(),
        )
        .map_err(|e| UnpackError::io(name, "create hardlink", e))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    /// A FIFO (counted in [`UnpackStats::files`](super::UnpackStats::files)).
    pub(super) fn fifo<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        name: &str,
    ) -> Result<(), UnpackError> {
        let meta = Meta::of(entry, name)?;
        let (parent, file_name) = self.prepare(path, name)?;
        mkfifoat(parent.as_fd(), file_name, Mode::from_bits_truncate(PRIVATE))
            .map_err(|e| UnpackError::io(name, "create fifo", e))?;
        // Never opened (that could block, or open whatever raced in): the
        // metadata is set by name, without following a symlink.
        if self.chown {
            fchownat(
                parent.as_fd(),
                file_name,
                Some(meta.uid),
                Some(meta.gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| UnpackError::io(name, "chown fifo", e))?;
        }
        fchmodat(
            parent.as_fd(),
            file_name,
            meta.mode,
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| UnpackError::io(name, "chmod fifo", e))?;
        utimensat(
            parent.as_fd(),
            file_name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| UnpackError::io(name, "set fifo times", e))?;
        self.stats.files += 1;
        Ok(())
    }

    /// Opens the parent of `path` and clears the final component.
    fn prepare<'p>(
        &self,
        path: &'p EntryPath,
        name: &str,
    ) -> Result<(std::os::fd::OwnedFd, &'p OsStr), UnpackError> {
        let parent = self.parent(path, name)?;
        let file_name = leaf(path, name)?;
        self.clear(parent.as_fd(), file_name, name)?;
        Ok((parent, file_name))
    }

    /// Owner (root only), then mode (after chown, which clears setuid), then
    /// times, all through the open fd.
    fn set_meta(&self, fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), UnpackError> {
        if self.chown {
            fchown(fd, Some(meta.uid), Some(meta.gid))
                .map_err(|e| UnpackError::io(name, "chown", e))?;
        }
        fchmod(fd, meta.mode).map_err(|e| UnpackError::io(name, "chmod", e))?;
        futimens(fd, &meta.mtime, &meta.mtime).map_err(|e| UnpackError::io(name, "set times", e))
    }
}

/// The final component of a path; the root itself has none and is refused.
fn leaf<'p>(path: &'p EntryPath, name: &str) -> Result<&'p OsStr, UnpackError> {
    path.name()
        .ok_or_else(|| UnpackError::refused(name, Refusal::ReplacesRoot))
}

/// `mkdirat` with a private mode (the entry's mode is set at the end).
fn make_dir(parent: BorrowedFd<'_>, file_name: &OsStr, name: &str) -> Result<(), UnpackError> {
    mkdirat(parent, file_name, Mode::from_bits_truncate(0o700))
        .map_err(|e| UnpackError::io(name, "create directory", e))
}
