//! Filesystem operations relative to a directory fd of the root.
//!
//! Multi-component paths are only ever opened with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so the
//! kernel refuses to leave the root or follow any symlink even if the tree
//! changes underneath. Every other call names a single component relative to
//! such a directory fd and never follows a symlink in it (`O_NOFOLLOW`,
//! `O_EXCL`, `AT_SYMLINK_NOFOLLOW`, or calls that never follow: `mkdirat`,
//! `unlinkat`, `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{open, openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// How every multi-component path is resolved.
const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// Flags to open a directory only as a handle for `*at` calls.
pub(super) const DIR_HANDLE: OFlag = OFlag::O_PATH.union(OFlag::O_DIRECTORY);

/// Flags to open a directory for listing, `fchmod`, `fchown`, `futimens`.
pub(super) const DIR_READ: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY);

/// `openat2` may fail with `EAGAIN` when a rename races with the lookup.
const EAGAIN_RETRIES: u32 = 16;

/// Mode of directories the layer needs but does not list.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Opens the caller's root directory (the caller's path is trusted).
pub(super) fn open_root(root: &Path) -> nix::Result<OwnedFd> {
    open(root, DIR_HANDLE | OFlag::O_CLOEXEC, Mode::empty())
}

/// Opens `rel` (no `..`; empty for `dir` itself) beneath `dir`, refusing
/// symlinks anywhere in it (`ELOOP`).
pub(super) fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(RESOLVE);
    let mut tries = 0;
    loop {
        match openat2(dir, path, how) {
            Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// Opens the directory `comps` beneath `root`, creating missing directories
/// (mode 0755, owned by the caller) like tar does.
pub(super) fn ensure_dir(root: BorrowedFd<'_>, comps: &[OsString]) -> nix::Result<OwnedFd> {
    let rel: std::path::PathBuf = comps.iter().collect();
    match open_beneath(root, &rel, DIR_HANDLE) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let mut dir = open_beneath(root, Path::new(""), DIR_HANDLE)?;
    for comp in comps {
        dir = match open_beneath(dir.as_fd(), Path::new(comp), DIR_HANDLE) {
            Ok(next) => next,
            Err(Errno::ENOENT) => make_dir(dir.as_fd(), comp)?,
            Err(e) => return Err(e),
        };
    }
    Ok(dir)
}

/// Creates directory `name` in `parent` with [`IMPLICIT_DIR_MODE`].
fn make_dir(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    let created = match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(e),
    };
    let dir = open_child_dir(parent, name)?;
    if created {
        fchmod(&dir, Mode::from_bits_truncate(IMPLICIT_DIR_MODE))?;
    }
    Ok(dir)
}

/// Opens directory `name` in `parent` for reading; `ELOOP`/`ENOTDIR` if it
/// is a symlink or not a directory.
pub(super) fn open_child_dir(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        parent,
        name,
        DIR_READ | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub(super) fn lstat(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file type bits of `st`.
pub(super) fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// True if `st` is a directory.
pub(super) fn is_dir(st: &FileStat) -> bool {
    kind(st) == SFlag::S_IFDIR
}

/// Removes `name` (described by `st`) from `dir`: a whole tree for a
/// directory, never following symlinks.
pub(super) fn remove(dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat) -> nix::Result<()> {
    if is_dir(st) {
        remove_tree(dir, name)
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
    }
}

/// The names in directory `dir`, without `.` and `..`.
pub(super) fn list(dir: BorrowedFd<'_>) -> nix::Result<Vec<OsString>> {
    let mut handle = Dir::openat(dir, ".", DIR_READ | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(&name).to_owned());
        }
    }
    Ok(names)
}

/// One directory being emptied by [`remove_tree`].
struct Frame {
    dir: OwnedFd,
    name: OsString,
    pending: Vec<OsString>,
}

impl Frame {
    fn open(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Self> {
        let dir = open_child_dir(parent, name)?;
        let pending = list(dir.as_fd())?;
        Ok(Self {
            dir,
            name: name.to_owned(),
            pending,
        })
    }
}

/// Removes directory `name` of `parent` and everything below it, without
/// recursion (trees may be deep) and without following symlinks.
pub(super) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let mut stack = vec![Frame::open(parent, name)?];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.pending.pop() {
            match unlinkat(
                top.dir.as_fd(),
                child.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => {
                    let frame = Frame::open(top.dir.as_fd(), &child)?;
                    stack.push(frame);
                }
                Err(e) => return Err(e),
            }
        } else if let Some(done) = stack.pop() {
            let holder = stack.last().map_or(parent, |f| f.dir.as_fd());
            unlinkat(holder, done.name.as_os_str(), UnlinkatFlags::RemoveDir)?;
        }
    }
    Ok(())
}
